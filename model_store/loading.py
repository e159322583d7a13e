"""Loaders shared by the registry's validation and the workers' runners."""

from __future__ import annotations

from typing import Any

import numpy as np

from model_store.signature import Signature


def run_torchscript(
    module: Any, sig: Signature, inputs: dict[str, np.ndarray], device: Any
) -> dict[str, np.ndarray]:
    """Call a TorchScript module with inputs in signature order; map outputs to their names."""
    import torch

    args = []
    for t in sig.inputs:
        arr = np.ascontiguousarray(inputs[t.name])
        if not arr.flags.writeable:  # decoded straight from the wire: torch wants its own copy
            arr = arr.copy()
        args.append(torch.from_numpy(arr).to(device, non_blocking=True))
    with torch.inference_mode():
        result = module(*args)
    if isinstance(result, torch.Tensor):
        result = (result,)
    if isinstance(result, dict):
        tensors = [result[t.name] for t in sig.outputs]
    elif isinstance(result, list | tuple):
        tensors = list(result)
    else:
        raise TypeError(f"model returned {type(result).__name__}, expected tensors")
    if len(tensors) != len(sig.outputs):
        raise ValueError(f"model returned {len(tensors)} outputs, signature declares {len(sig.outputs)}")
    return {t.name: tensor.detach().cpu().numpy() for t, tensor in zip(sig.outputs, tensors, strict=True)}
