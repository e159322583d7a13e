"""Synthetic LoRA adapters of an hf-encoder bundle, made with peft (no trainer): random A and B
(init_lora_weights=False) on the query and value projections of a copy of the base encoder,
optionally with a random task head, exported in the lora-adapter format; and the reference
outputs peft's own model computes for them."""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model_store.hf_encoder import encoder_signature, head_signature, open_bundle
from model_store.limits import ArtifactLimits
from model_store.signature import Signature
from tests.causal_tiny import tar_of as pack
from workers.common.hf_model import build_encoder, embed, make_tokenizer, tokenize
from workers.common.lora import state_of

TARGETS = ["query", "value"]


class _Holder(torch.nn.Module):
    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder = encoder


@dataclass
class SyntheticAdapter:
    data: bytes  # the lora-adapter bundle
    signature: Signature
    tuned: _Holder  # peft's model: the base encoder copy with the LoRA layers injected
    head: torch.nn.Linear | None
    task: str
    base: bytes  # the base bundle

    def reference(self, texts: list[str]) -> dict[str, np.ndarray]:
        """What the adapter version must answer: peft's forward, pooled, then the head."""
        bundle = open_bundle(io.BytesIO(self.base), ArtifactLimits())
        _enc, wants_types = build_encoder(bundle, serve=False)
        x = tokenize(make_tokenizer(bundle), texts)
        with torch.no_grad():
            emb = embed(self.tuned.encoder, wants_types, x)
            if self.head is None:
                return {"embedding": emb.numpy()}
            out = self.head(emb)
        if self.task == "classification":
            return {"logits": out.numpy(), "probabilities": torch.softmax(out, dim=1).numpy()}
        return {"prediction": out.numpy()}


def make_adapter(
    base: bytes, seed: int, head: tuple[str, int] | None = None, r: int = 4, alpha: int = 8
) -> SyntheticAdapter:
    import peft
    from safetensors.torch import save

    bundle = open_bundle(io.BytesIO(base), ArtifactLimits())
    encoder, _wants_types = build_encoder(bundle, serve=False)
    tuned = _Holder(copy.deepcopy(encoder))
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False)
    torch.manual_seed(seed)
    peft.inject_adapter_in_model(cfg, tuned)
    tuned.eval()
    tensors = state_of(tuned)
    linear = None
    task = "embedding"
    if head is not None:
        task, k = head
        linear = torch.nn.Linear(bundle.hidden_size, k)
        tensors["head.weight"] = linear.weight.detach().clone().contiguous()
        tensors["head.bias"] = linear.bias.detach().clone().contiguous()
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": TARGETS,
        "base_format": "hf-encoder",
        "task": "classification" if head is None else head[0],
        "head": None if head is None else {"num_outputs": head[1]},
    }
    data = pack(
        {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": save(tensors)}
    )
    sig = head_signature(*head) if head is not None else encoder_signature(bundle.hidden_size)
    return SyntheticAdapter(data, sig, tuned, linear, task, base)
