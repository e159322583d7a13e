"""The TorchScript op policy: hostile archives refused before and after loading, our own and
common models accepted, the worker's and the trainer's load paths refuse too."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from model_store.errors import InvalidArtifact
from model_store.registry import ResolvedVersion
from model_store.signature import Signature, VersionConfig
from model_store.torchscript_check import (
    check_code,
    check_torchscript_archive,
    check_torchscript_module,
    op_refusal,
)
from tests.ft_data import mlp_bytes
from tests.malicious_models import PAIR_SIGNATURE, hostile_torchscript
from tests.models import FailsOnNegative, Scale, torchscript_bytes
from tests.serving_models import Wide
from workers.contract.errors import LoadError
from workers.finetune.model import load_scripted, save_scripted
from workers.inference.runners import load_local_runner as load_runner

HOSTILE = hostile_torchscript("/etc/hostname")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_archive_check_refuses_before_loading(case: str) -> None:
    data, op = HOSTILE[case]
    with pytest.raises(InvalidArtifact, match=f"TorchScript op {op} is not allowed"):
        check_torchscript_archive(data)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_module_check_refuses_the_loaded_graphs(case: str) -> None:
    data, op = HOSTILE[case]
    if case == "setstate":  # loading would run the read; the scripted module has the same graphs
        from tests.malicious_models import FromFileAtLoad

        module = torch.jit.script(FromFileAtLoad("/etc/hostname"))
    else:
        module = torch.jit.load(io.BytesIO(data))
    with pytest.raises(InvalidArtifact, match=f"TorchScript op {op} is not allowed"):
        check_torchscript_module(module)


def _common_models() -> dict[str, bytes]:
    mlp = load_scripted(mlp_bytes(), torch.device("cpu"))
    mlp.train()
    loss = mlp(torch.randn(3, 4)).sum()
    loss.backward()  # a fine-tuned result is saved after autograd ran on it
    models = {
        "scale": torchscript_bytes(Scale()),
        "fails": torchscript_bytes(FailsOnNegative()),
        "wide": torchscript_bytes(Wide()),
        "ft_mlp": mlp_bytes(),
        "ft_result": save_scripted(mlp),
        "transformer": torchscript_bytes(
            torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2)
        ),
        "lstm": torchscript_bytes(torch.nn.LSTM(4, 8)),
        "conv": torchscript_bytes(
            torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.1))
        ),
    }
    from benchmarks.serve_bench import MLP

    models["bench_mlp"] = torchscript_bytes(MLP())
    return models


def test_our_and_common_models_pass_both_checks() -> None:
    for name, data in _common_models().items():
        check_torchscript_archive(data)
        check_torchscript_module(torch.jit.load(io.BytesIO(data)))
        assert name


@pytest.mark.parametrize(
    ("op", "refused"),
    [
        ("aten::from_file", True),
        ("aten::from_file.out", True),
        ("aten::save", True),
        ("aten::set_.source_Storage", True),
        ("aten::_load_for_mobile", True),
        ("aten::untyped_storage", True),
        ("prim::PythonOp", True),
        ("prim::rpc_async", True),
        ("kilntest::echo", True),
        ("quantized::linear", True),
        ("aten::add", False),
        ("aten::storage_offset", False),
        ("prim::If", False),
        ("prim::profile", False),
        ("aten::_nested_tensor_from_mask", False),
    ],
)
def test_op_policy(op: str, refused: bool) -> None:
    assert (op_refusal(op) is not None) is refused


def test_registry_refusals_are_only_file_storage_and_python_ops() -> None:
    """The name rule, applied to every op this torch registers in aten/prim, refuses a short list
    (a regression guard against the rule growing to refuse tensor math)."""
    names = {s.name for s in torch._C._jit_get_all_schemas() if s.name.split("::")[0] in ("aten", "prim")}
    refused = sorted(n for n in names if op_refusal(n))
    assert "aten::from_file" in refused and "aten::save" in refused
    assert len(refused) < 20, refused
    assert len(names) - len(refused) > 1000


@pytest.mark.parametrize(
    ("code", "named"),
    [
        ("def f(x):\n  t = torch\n  return t.from_file('a')\n", "'torch' as a value"),
        ("def f(x):\n  return getattr(torch, 'from_file')('a')\n", "aten::from_file"),
        ("def f(x, s):\n  return getattr(x, 'set_')(s)\n", "aten::set_"),
        ("def f(x, s):\n  return (x).set_(s)\n", "aten::set_"),
        ("def f(x):\n  return ops.kilntest.echo(x)\n", "kilntest::echo"),
        ("def f(x):\n  return torch.ops.aten.from_file('a')\n", "aten::from_file"),
        ("def f(x):\n  return torch.autograd.save(x, 'a')\n", "aten::save"),
        ("def f(x):\n  o = ops\n  return x\n", "'ops' as a value"),
        ("def f(x: __torch__.torch.classes.ns.Reader):\n  return x\n", "custom class"),
        ("import os\n", "may not import"),
        ("def f(x:\n", "cannot be checked"),
    ],
)
def test_code_scan_sees_through_rewritten_code(code: str, named: str) -> None:
    """An archive is attacker-written text, not necessarily what torch.jit.save prints."""
    with pytest.raises(InvalidArtifact, match=named.replace("(", r"\(")):
        check_code(code.encode())


def _rewrite(data: bytes, edit: dict[str, bytes], extra: list[tuple[str, bytes]] | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            for suffix, new in edit.items():
                if info.filename.endswith(suffix):
                    body = new
            dst.writestr(info.filename, body)
        for name, body in extra or []:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the point of it
                dst.writestr(name, body)
    return out.getvalue()


def test_hand_edited_archive_is_refused() -> None:
    data = torchscript_bytes(Scale())
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        member = next(n for n in zf.namelist() if "/code/" in n and n.endswith(".py"))
        code = zf.read(member)
    evil = code.replace(b"torch.mul(", b"torch.mul(torch.from_file('/etc/hostname', False, 8), ")
    assert evil != code
    with pytest.raises(InvalidArtifact, match="aten::from_file"):
        check_torchscript_archive(_rewrite(data, {member: evil}))
    with pytest.raises(InvalidArtifact, match="duplicate"):
        check_torchscript_archive(_rewrite(data, {}, [(member, code)]))


def test_pickled_custom_class_is_refused() -> None:
    data = torchscript_bytes(Scale())
    payload = b"\x80\x02c__torch__.torch.classes.ns\nReader\nq\x00)\x81."
    assert pickle.DEFAULT_PROTOCOL >= 2
    with pytest.raises(InvalidArtifact, match="custom class"):
        check_torchscript_archive(_rewrite(data, {"data.pkl": payload}))


def _version(fmt: str = "torchscript") -> ResolvedVersion:
    sig = Signature.model_validate(PAIR_SIGNATURE)
    return ResolvedVersion(1, 1, "m", 1, fmt, "0" * 64, sig, VersionConfig())


def test_worker_load_path_refuses_before_running(tmp_path: Path) -> None:
    marker = tmp_path / "written"
    data, _ = hostile_torchscript(str(marker))["save"]
    with pytest.raises(LoadError, match="aten::save"):
        load_runner(_version(), data)
    assert not marker.exists()
    assert load_runner(_version(), torchscript_bytes(Wide())).run  # a clean model still loads


def test_trainer_load_path_refuses() -> None:
    data, _ = HOSTILE["submodule"]
    with pytest.raises(InvalidArtifact, match="aten::from_file"):
        load_scripted(data, torch.device("cpu"))
