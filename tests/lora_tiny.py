"""Synthetic LoRA adapters (the lora-adapter format, model_store/lora_adapter.py) for a tiny
causal LM: peft's LoRA with random A and B (init_lora_weights=False), exported by
workers.common.lora.state_of and packed as a tar. Needs peft and torch."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from typing import Any

from tests.causal_tiny import tar_of

TARGETS = ("q_proj", "v_proj")


def adapter_bytes(model: Any, seed: int, r: int = 4, alpha: int = 16) -> bytes:
    """An adapter of `model` (not changed: peft works on a copy)."""
    import peft
    import torch

    from workers.common.lora import state_of

    tuned = copy.deepcopy(model).to("cpu", torch.float32)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(TARGETS), init_lora_weights=False)
    torch.manual_seed(seed)
    peft.inject_adapter_in_model(cfg, tuned)
    return pack_adapter(state_of(tuned), r, alpha)


def pack_adapter(state: dict[str, Any], r: int = 4, alpha: int = 16) -> bytes:
    from safetensors.torch import save

    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": list(TARGETS),
        "base_format": "hf-causal-lm",
        "task": "causal-lm",
        "head": None,
    }
    return tar_of(
        {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": save(state)}
    )


def mismatched_bytes(model: Any, seed: int) -> bytes:
    """A well-formed adapter whose layers' widths do not fit `model` (its q_proj's A is wider)."""
    import torch
    from safetensors.torch import load

    data = adapter_bytes(model, seed)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("adapter_model.safetensors")
        assert member is not None
        state = load(member.read())
    name = next(k for k in sorted(state) if k.endswith("q_proj.lora_A.weight"))
    a = state[name]
    state[name] = torch.randn(a.shape[0], a.shape[1] + 8)
    return pack_adapter(state)
