"""LoRA adapters on an hf-encoder runner's one copy of its base encoder (workers/common/lora.py).

The runner of a base version serves the base and every adapter version of it a worker has
loaded: the adapters' low-rank updates sit beside the base's linear layers (never changing
them), at most `capacity` adapters at a time (least recently used evicted, never one a batch is
running with). A batch is of one version: it runs under `selecting(adapter)`, then through that
adapter's head (its task's outputs: model_store/hf_encoder.head_signature) or, for an adapter
without one, the base's pooling (embeddings). Dynamic-int8 bases work: a LoRA layer wraps any
module with in_features/out_features (torch.ao's dynamic int8 linear has them) and computes its
update in float32.

Adapter bytes come from the worker (which checked their sha256); they are read here with the
format's own checks (model_store/lora_adapter.py), never as pickle.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from model_store.limits import ArtifactLimits
from workers.common.lora import AdapterMismatch, AdapterSet, read_adapter, selecting
from workers.inference.runtime import AdapterMissing

Outputs = dict[str, np.ndarray]


def _missing(key: int) -> Callable[[], Any]:
    def load() -> Any:
        raise AdapterMissing(key)

    return load


class _Holder(torch.nn.Module):
    """Names the base encoder `encoder`, as the adapters' layer paths do (they are relative to
    workers/common/hf_model.EncoderWithHead). Holds the runner's own module: no copy."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder


class EncoderAdapters:
    def __init__(self, encoder: torch.nn.Module, hidden: int, device: torch.device) -> None:
        self.hidden = hidden
        self.device = device
        self._holder = _Holder(encoder)
        self.set: AdapterSet | None = None  # made with the first adapter (its capacity comes with it)

    def has(self, key: int) -> bool:
        return self.set is not None and key in self.set.loaded

    def add(self, key: int, data: bytes, capacity: int, limits: ArtifactLimits) -> None:
        """Load adapter `key` from its bundle bytes (AdapterMismatch if it does not fit the base)."""
        if self.set is None:
            self.set = AdapterSet(self._holder, capacity)
        self.set.capacity = max(1, capacity)
        weights = self.set.ensure(key, lambda: self._read(data, limits))
        if weights.config.base_format != "hf-encoder":
            raise AdapterMismatch("the adapter was trained on a model that is not an hf-encoder")

    def _read(self, data: bytes, limits: ArtifactLimits) -> Any:
        weights = read_adapter(io.BytesIO(data), limits, self.device)
        if weights.head is not None and weights.head[0].shape[1] != self.hidden:
            raise AdapterMismatch(
                f"the adapter's head takes {weights.head[0].shape[1]} features; the base's "
                f"embedding has {self.hidden}"
            )
        return weights

    def run(self, key: int, embed: Callable[[], torch.Tensor]) -> Outputs:
        """`embed()` (the base's pooled embedding of the batch) under adapter `key`, then its head."""
        adapters = self.set
        if adapters is None:
            raise AdapterMissing(key)
        adapters.pin(key)  # pinned first: once found loaded, it cannot be evicted under this batch
        try:
            weights = adapters.ensure(key, _missing(key))  # marked used now
            with selecting(key):
                emb = embed()
        finally:
            adapters.unpin(key)
        if weights.head is None:
            return {"embedding": emb.float().cpu().numpy()}
        w, b = weights.head
        out = torch.nn.functional.linear(emb.to(w.dtype), w, b).float()
        if weights.config.task == "classification":
            probs = torch.softmax(out, dim=1)
            return {"logits": out.cpu().numpy(), "probabilities": probs.cpu().numpy()}
        return {"prediction": out.cpu().numpy()}
