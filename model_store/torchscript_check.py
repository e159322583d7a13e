"""TorchScript op policy: refuse models whose code can touch files, storages or custom code.

What a TorchScript model can do is the set of operators its code calls. The policy:

- Namespaces: only `aten::` (tensor math) and `prim::` (TorchScript's control flow, containers,
  attributes) are allowed. Every other namespace (custom ops from `torch.ops.<ns>`, `quantized::`,
  `c10d::`, `profiler::` ...) is refused, and so are custom classes (`torch.classes.*`), whose
  methods and `__setstate__` are native code.
- Inside those namespaces a name rule (not a per-op list) refuses file access (`from_file`,
  `save`, anything with file/load/save/pickle/mmap in its name), storage and shared-memory
  access (`set_` onto a Storage, storage/share/shm/ipc names; the read-only `storage_offset`
  family excepted), Python and remote calls (`prim::PythonOp`, `prim::rpc_*`). Against this
  torch's registry that refuses 9 of 1,830 aten/prim op names (a unit test keeps it short).
  Allowed on purpose: `fork`/`wait` (inter-op threads, no I/O), `manual_seed`/`seed` and
  `prim::Print` (state and output of the loading process only).

The check runs twice: on the archive before anything is loaded (`check_torchscript_archive`:
every `.py` member parsed with `ast`, every pickle's globals), because loading runs the model's
`__setstate__`; and on the loaded module (`check_torchscript_module`: the inlined graph of every
method of every submodule, blocks and subgraphs included), which sees what TorchScript itself
compiled, whatever the text parser made of it. A refusal is `InvalidArtifact` naming the op.
"""

from __future__ import annotations

import ast
import functools
import io
import pickletools
import re
import zipfile
from collections.abc import Iterator
from typing import Any

from model_store.errors import InvalidArtifact

ALLOWED_NAMESPACES = frozenset({"aten", "prim"})
_DENIED_NAME = re.compile(
    r"(?P<file>(?<!pro)file|save|load|pickle|mmap)|(?P<storage>storage|share|shm|ipc)"
    r"|(?P<python>python|rpc)|(?P<wait>sleep)"
)
_REASONS = {
    "file": "file access",
    "storage": "storage or shared-memory access",
    "python": "Python or remote call",
    "wait": "blocking call",
}
# Read-only storage introspection: no storage object comes out of these.
_SAFE_NAMES = frozenset(
    {"storage_offset", "sym_storage_offset", "_nested_tensor_storage_offsets", "_has_same_storage_numel"}
)
# set_/set with a Storage source rebind a tensor to memory the model did not allocate.
_DENIED_EXACT = frozenset({"set", "set_"})
# Storage methods in Python that reach files or shared memory (never ops, refused as names too).
_STORAGE_METHODS = frozenset(
    {"untyped_storage", "_typed_storage", "_new_shared_filename", "_share_filename_", "_share_fd_"}
)
_CODE_ROOTS = frozenset({"torch", "ops"})
_MAX_CODE_BYTES = 64 * 1024 * 1024
_CUSTOM_CLASS = re.compile(r"torch\.classes\.[\w.]+")
# The commonest nodes, whose attributes are never graphs (skips a walk over their attributes).
_NO_SUBGRAPHS = frozenset({"prim::Constant", "prim::GetAttr", "prim::SetAttr", "prim::ListConstruct"})


def op_refusal(qualified: str) -> str | None:
    """Why the operator `ns::name[.overload]` is refused, or None when it is allowed."""
    ns, _, name = qualified.partition("::")
    if ns not in ALLOWED_NAMESPACES:
        return "custom or non-core operator namespace"
    base = name.split(".", 1)[0]
    if base in _SAFE_NAMES:
        return None
    if base in _DENIED_EXACT or base in _STORAGE_METHODS:
        return _REASONS["storage"]
    match = _DENIED_NAME.search(base.lower())
    return _REASONS[str(match.lastgroup)] if match else None


_cached_refusal = functools.lru_cache(maxsize=4096)(op_refusal)


def _refuse_op(qualified: str, reason: str) -> InvalidArtifact:
    return InvalidArtifact(f"TorchScript op {qualified} is not allowed ({reason})")


def _check_op(qualified: str) -> None:
    reason = op_refusal(qualified)
    if reason is not None:
        raise _refuse_op(qualified, reason)


@functools.cache
def _aten_names() -> frozenset[str]:
    """Every aten op name this torch knows: a method call by one of these names may be an op."""
    import torch

    schemas = torch._C._jit_get_all_schemas()
    return frozenset(s.name.split("::", 1)[1] for s in schemas if s.name.startswith("aten::"))


def _check_method_name(name: str) -> None:
    """`x.set_(storage)`: a method call on a value dispatches to the aten op of that name."""
    if name in _STORAGE_METHODS or name in _aten_names():
        _check_op(f"aten::{name}")


# --- before loading: the archive's code and pickles -------------------------------------


def check_torchscript_archive(data: bytes) -> None:
    """Refuse an archive whose serialized code or pickles name a refused op or custom class."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise InvalidArtifact("not a TorchScript archive (unreadable zip)") from exc
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise InvalidArtifact("TorchScript archive has duplicate member names")
    budget = _MAX_CODE_BYTES
    for info in infos:
        if not info.filename.endswith((".py", ".pkl", ".debug_pkl")):
            continue
        if info.file_size > budget:
            raise InvalidArtifact("TorchScript archive code is too large to check")
        with zf.open(info) as member:
            raw = member.read(budget + 1)
        budget -= len(raw)
        if budget < 0:
            raise InvalidArtifact("TorchScript archive code is too large to check")
        if info.filename.endswith(".py"):
            check_code(raw, info.filename)
        else:
            _check_pickle(raw, info.filename)


def check_code(raw: bytes, where: str = "code") -> None:
    try:
        tree = ast.parse(raw.decode("utf-8"), filename=where)
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArtifact(f"TorchScript code {_member(where)} cannot be checked") from exc
    _CodeScan().visit(tree)


def _member(where: str) -> str:
    return where.rsplit("/code/", 1)[-1]


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _check_chain(chain: list[str]) -> None:
    root, rest = chain[0], chain[1:]
    if "classes" in rest and (root == "torch" or rest[:1] == ["torch"]):
        raise InvalidArtifact(f"TorchScript custom class {'.'.join(chain)} is not allowed")
    if root == "__torch__":
        return  # the archive's own classes and functions: their code is checked too
    if root == "ops" or (root == "torch" and rest[:1] == ["ops"]):
        path = rest if root == "ops" else rest[1:]
        if len(path) < 2:
            raise InvalidArtifact(f"TorchScript code uses {'.'.join(chain)} as a value")
        _check_op(f"{path[0]}::{path[1]}")
        return
    if root == "torch":
        for part in rest:  # torch.X and torch.autograd.X resolve to aten::X
            _check_op(f"aten::{part}")
        return
    _check_method_name(chain[-1])


class _CodeScan(ast.NodeVisitor):
    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = _dotted(node)
        if chain is None:
            _check_method_name(node.attr)
            self.generic_visit(node)
        else:
            _check_chain(chain)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in _CODE_ROOTS:  # `t = torch` or getattr(torch, ...) would hide the op name
            raise InvalidArtifact(f"TorchScript code uses {node.id!r} as a value")

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            for arg in node.args[1:2]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    _check_method_name(arg.value)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        raise InvalidArtifact("TorchScript code may not import")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        raise InvalidArtifact("TorchScript code may not import")


def _check_pickle(raw: bytes, where: str) -> None:
    """Pickled objects of a custom class run its native `__setstate__` at load."""
    try:
        for opcode, arg, _ in pickletools.genops(raw):
            if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                qualified = arg.replace(" ", ".")
                if "torch.classes." in qualified:
                    raise InvalidArtifact(f"TorchScript custom class {qualified} is not allowed")
            elif opcode.name == "STACK_GLOBAL":
                raise InvalidArtifact(f"TorchScript pickle {_member(where)} cannot be checked")
    except InvalidArtifact:
        raise
    except Exception as exc:
        raise InvalidArtifact(f"TorchScript pickle {_member(where)} cannot be checked") from exc


# --- after loading: the graphs TorchScript compiled --------------------------------------


def check_torchscript_module(module: Any) -> None:
    """Refuse a loaded module if any method of it or of a submodule calls a refused op."""
    seen: set[str] = set()
    for prefix, sub in module.named_modules():
        kind = sub._c._type().qualified_name()
        _check_type_name(kind)
        if kind in seen:  # methods belong to the type: six identical layers are checked once
            continue
        seen.add(kind)
        for name in sub._c._method_names():
            graph = sub._c._get_method(name).inlined_graph
            where = f"{prefix + '.' if prefix else ''}{name}"
            custom = _CUSTOM_CLASS.search(str(graph))  # every value's type is in the printout
            if custom:
                raise InvalidArtifact(f"TorchScript custom class {custom[0]} is not allowed, in {where}")
            for node in _all_nodes(graph.block()):
                _check_kind(node.kind(), where)


def _all_nodes(block: Any) -> Iterator[Any]:
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _all_nodes(inner)
        if node.kind() in _NO_SUBGRAPHS:
            continue
        for attr in node.attributeNames():
            kind = node.kindOf(attr)
            graphs = [node.g(attr)] if kind == "g" else node.gs(attr) if kind == "gs" else []
            for graph in graphs:
                yield from _all_nodes(graph.block())


def _check_kind(kind: str, where: str) -> None:
    reason = _cached_refusal(kind)
    if reason is not None:
        raise InvalidArtifact(f"TorchScript op {kind} is not allowed ({reason}), in {where}")


def _check_type_name(name: str) -> None:
    if "torch.classes." in name:
        raise InvalidArtifact(f"TorchScript custom class {name} is not allowed")
