"""TorchScript models for fine-tuning: load, pick the trainable parameters, call, save.

A scripted module is trained directly (it supports .parameters(), .train() and autograd) and
saved again with torch.jit.save, so the result is a TorchScript version like its parent.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch

from model_store.signature import Signature
from model_store.torchscript_check import check_torchscript_archive, check_torchscript_module


class ModelNotTrainable(Exception):
    """The model (or the freeze list) leaves nothing to train."""


def load_scripted(data: bytes, device: torch.device) -> Any:
    """Load a stored TorchScript model under the same op policy as serving (before and after)."""
    check_torchscript_archive(data)
    module = torch.jit.load(io.BytesIO(data), map_location=device)
    check_torchscript_module(module)
    return module


def save_scripted(module: Any) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(module, buf)
    return buf.getvalue()


def float_parameters(module: Any) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]


def head_prefix(names: list[str]) -> str:
    """The head is the module that owns the last parameter (`net.2.weight` -> `net.2.`)."""
    last = names[-1]
    return last.rsplit(".", 1)[0] + "." if "." in last else last


def trainable_names(module: Any, freeze: list[str]) -> list[str]:
    """Float parameters left trainable: `backbone` freezes all but the head; other entries are
    parameter-name prefixes to freeze."""
    names = [n for n, _ in float_parameters(module)]
    if not names:
        raise ModelNotTrainable("the model has no floating-point parameters to train")
    keep = names
    if "backbone" in freeze:
        head = head_prefix(names)
        keep = [n for n in names if n == head or n.startswith(head)]
    prefixes = tuple(f for f in freeze if f != "backbone")
    if prefixes:
        keep = [n for n in keep if not n.startswith(prefixes)]
    if not keep:
        raise ModelNotTrainable("the freeze list leaves no parameter to train")
    return keep


def parameter_counts(module: Any, trainable: list[str]) -> dict[str, int]:
    wanted = set(trainable)
    total = sum(p.numel() for _, p in float_parameters(module))
    train = sum(p.numel() for n, p in float_parameters(module) if n in wanted)
    return {"total_parameters": int(total), "trainable_parameters": int(train)}


def first_output(module: Any, x: torch.Tensor, sig: Signature) -> torch.Tensor:
    out = module(x)
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return out[sig.outputs[0].name]
    if isinstance(out, list | tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ModelNotTrainable("the model's first output is not a tensor")


def _submodule(module: Any, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def resize_head(module: Any, num_classes: int) -> int:
    """Widen the head (the module owning the last parameter: weight [C, H], bias [C]) to
    num_classes outputs; old classes keep their weights, new rows start at zero. Returns C."""
    names = [n for n, _ in float_parameters(module)]
    prefix = head_prefix(names).rstrip(".")
    head = _submodule(module, prefix) if prefix else module
    weight = getattr(head, "weight", None)
    bias = getattr(head, "bias", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ModelNotTrainable(
            "the head is not a linear layer (weight [classes, features]); cannot resize it"
        )
    old = int(weight.shape[0])
    if num_classes < old:
        raise ModelNotTrainable(f"num_classes {num_classes} is fewer than the model's {old} classes")
    if num_classes == old:
        return old
    with torch.no_grad():
        extra = num_classes - old
        head.weight = torch.nn.Parameter(
            torch.cat([weight.detach(), weight.new_zeros(extra, weight.shape[1])])
        )
        if isinstance(bias, torch.Tensor) and bias.ndim == 1:
            head.bias = torch.nn.Parameter(torch.cat([bias.detach(), bias.new_zeros(extra)]))
    return old


def with_classes(sig: Signature, num_classes: int | None) -> Signature:
    """The parent's signature, with the first output's last dimension set to num_classes."""
    if num_classes is None:
        return sig
    first = sig.outputs[0]
    shape = (*first.shape[:-1], num_classes)
    outputs = (first.model_copy(update={"shape": shape}), *sig.outputs[1:])
    return sig.model_copy(update={"outputs": outputs})
