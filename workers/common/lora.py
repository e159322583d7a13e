"""Many LoRA adapters on one copy of a base model, in one forward pass (S-LoRA's idea, in torch).

Every linear layer some loaded adapter targets is wrapped once in a `LoraLinear`, which keeps the
base layer and, per loaded adapter, its A [r, in] and B [out, r] (and scale alpha / r). Which
adapter each token uses is a selection set for the current thread around a forward pass:
- an int: every token of the pass uses that adapter (an encoder batch of one adapter);
- a 1-d int tensor of one slot per token of the flattened input (tokens of x.reshape(-1, in)),
  -1 for none: a packed continuous batch whose sequences use different adapters.
- None (no selection): the base model alone.
The update of a token is x @ A.T @ B.T * scale, computed for each adapter's tokens only (one
gather, two small matmuls, one index_add per adapter present); the base weights are never
changed, so adapters come and go without copying the base.

`AdapterSet` holds the loaded adapters of one base: load on first use, least-recently-used
eviction above its capacity, never evicting one pinned by a running request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from model_store.bundles import Source
from model_store.limits import ArtifactLimits
from model_store.lora_adapter import AdapterConfig, open_adapter

Selection = int | torch.Tensor | None
_local = threading.local()


def current() -> Selection:
    return getattr(_local, "selection", None)


def _groups() -> dict[int, torch.Tensor]:
    """The per-token selection's tokens of each adapter slot, computed once per selection (one
    device sync for the whole forward pass, not one per adapted layer)."""
    groups: dict[int, torch.Tensor] | None = getattr(_local, "groups", None)
    if groups is None:
        sel = current()
        assert isinstance(sel, torch.Tensor)
        groups = {int(s): (sel == s).nonzero().squeeze(1) for s in torch.unique(sel).tolist() if int(s) >= 0}
        _local.groups = groups
    return groups


@contextmanager
def selecting(selection: Selection) -> Iterator[None]:
    """Which adapter(s) the forward passes of this thread use inside the block."""
    before, before_groups = current(), getattr(_local, "groups", None)
    _local.selection, _local.groups = selection, None
    try:
        yield
    finally:
        _local.selection, _local.groups = before, before_groups


@dataclass(slots=True)
class AdapterWeights:
    config: AdapterConfig
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]  # path -> (A [r, in], B [out, r])
    head: tuple[torch.Tensor, torch.Tensor] | None  # encoder task head: weight [K, H], bias [K]

    @property
    def nbytes(self) -> int:
        tensors = [t for pair in self.layers.values() for t in pair] + list(self.head or ())
        return sum(t.numel() * t.element_size() for t in tensors)


def read_adapter(
    source: Source,
    limits: ArtifactLimits,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> AdapterWeights:
    """A stored adapter bundle's tensors (checked: model_store/lora_adapter.py) on `device`."""
    from safetensors.torch import load as load_safetensors

    bundle = open_adapter(source, limits)
    assert bundle.weights is not None
    state = load_safetensors(bundle.weights)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype or torch.float32)

    layers = {
        p: (cast(state[f"{p}.lora_A.weight"]), cast(state[f"{p}.lora_B.weight"])) for p in bundle.layers
    }
    head = None
    if bundle.config.head_outputs is not None:
        head = (cast(state["head.weight"]), cast(state["head.bias"]))
    return AdapterWeights(bundle.config, layers, head)


class LoraLinear(torch.nn.Module):
    """A base linear layer plus the loaded adapters' low-rank updates, chosen per token."""

    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base = base
        self.adapters: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        sel = current()
        if sel is None or not self.adapters:
            return y
        if isinstance(sel, int):
            found = self.adapters.get(sel)
            if found is None:
                return y
            a, b, scale = found
            return y + (x.to(a.dtype) @ a.T @ b.T * scale).to(y.dtype)
        groups = _groups()
        if not groups.keys() & self.adapters.keys():  # base tokens only (or adapters not here)
            return y
        flat_x = x.reshape(-1, x.shape[-1])
        flat_y = y.reshape(-1, y.shape[-1]).clone()
        for slot, tokens in groups.items():
            if slot not in self.adapters:
                continue
            a, b, scale = self.adapters[slot]
            idx = tokens.to(flat_x.device)
            if sel.shape[0] != flat_x.shape[0]:  # a selection of another length: its tokens in range
                idx = idx[idx < flat_x.shape[0]]
            delta = flat_x.index_select(0, idx).to(a.dtype) @ a.T @ b.T * scale
            flat_y.index_add_(0, idx, delta.to(flat_y.dtype))
        return flat_y.reshape(y.shape)


def _parent(model: torch.nn.Module, path: str) -> tuple[torch.nn.Module, str]:
    owner, _, name = path.rpartition(".")
    return (model.get_submodule(owner) if owner else model), name


class AdapterSet:
    """The adapters loaded on one base model (slots are the adapters' version ids)."""

    def __init__(self, model: torch.nn.Module, capacity: int) -> None:
        self.model = model
        self.capacity = max(1, capacity)
        self.loaded: OrderedDict[int, AdapterWeights] = OrderedDict()  # least recently used first
        self.pins: dict[int, int] = {}
        self.evictions = 0
        self._lock = threading.Lock()

    def ensure(self, key: int, load: Callable[[], AdapterWeights]) -> AdapterWeights:
        """The adapter `key`, loaded with `load` unless it is (marked used now); may evict others."""
        with self._lock:
            found = self.loaded.get(key)
            if found is not None:
                self.loaded.move_to_end(key)
                return found
        weights = load()  # outside the lock: reading a bundle takes a while
        with self._lock:
            if key not in self.loaded:
                self._make_room()
                try:
                    self._attach(key, weights)
                except Exception:  # a layer that did not fit: none of the adapter stays attached
                    self._detach(key)
                    raise
                self.loaded[key] = weights
            self.loaded.move_to_end(key)
            return self.loaded[key]

    def _make_room(self) -> None:
        while len(self.loaded) >= self.capacity:
            victim = next((k for k in self.loaded if not self.pins.get(k)), None)
            if victim is None:
                raise AdapterCapacity(f"all {self.capacity} adapter slots are in use by running requests")
            self._detach(victim)
            del self.loaded[victim]
            self.evictions += 1

    def _attach(self, key: int, weights: AdapterWeights) -> None:
        """Every layer is checked first (a layer another adapter already wrapped too), so that an
        adapter that does not fit leaves nothing behind."""
        found = {path: self._layer(path, a, b) for path, (a, b) in weights.layers.items()}
        for path, (a, b) in weights.layers.items():
            parent, name, layer = found[path]
            if not isinstance(layer, LoraLinear):
                layer = LoraLinear(layer)
                setattr(parent, name, layer)
            layer.adapters[key] = (a, b, weights.config.scale)

    def _layer(self, path: str, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.nn.Module, str, Any]:
        try:
            parent, name = _parent(self.model, path)
            layer = getattr(parent, name)
        except AttributeError as exc:
            raise AdapterMismatch(f"the base model has no layer {path[:80]!r}") from exc
        _check_shapes(layer.base if isinstance(layer, LoraLinear) else layer, a, b, path)
        return parent, name, layer

    def _detach(self, key: int) -> None:
        for module in self.model.modules():
            if isinstance(module, LoraLinear):
                module.adapters.pop(key, None)

    def pin(self, key: int) -> None:
        with self._lock:
            self.pins[key] = self.pins.get(key, 0) + 1

    def unpin(self, key: int) -> None:
        with self._lock:
            left = self.pins.get(key, 0) - 1
            if left > 0:
                self.pins[key] = left
            else:
                self.pins.pop(key, None)

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.loaded.values())


def _check_shapes(layer: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, path: str) -> None:
    in_f, out_f = getattr(layer, "in_features", None), getattr(layer, "out_features", None)
    if in_f is None or out_f is None:
        raise AdapterMismatch(f"layer {path[:80]!r} of the base model is not a linear layer")
    if a.shape[1] != in_f or b.shape[0] != out_f:
        raise AdapterMismatch(
            f"layer {path[:80]!r}: the adapter is for [{a.shape[1]} -> {b.shape[0]}], "
            f"the base has [{in_f} -> {out_f}]"
        )


class AdapterMismatch(Exception):
    """The adapter does not fit the base model it is attached to."""


class AdapterCapacity(Exception):
    """No adapter slot is free: every loaded adapter is used by a running request."""


def state_of(module: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The LoRA tensors of a peft-wrapped module, named as the lora-adapter format names them:
    peft's `base_model.model.<path>.lora_A.default.weight` -> `<path>.lora_A.weight`."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict().items():
        if ".lora_A." not in name and ".lora_B." not in name:
            continue
        clean = name.removeprefix("base_model.model.").replace(".default.weight", ".weight")
        out[prefix + clean] = tensor.detach().to("cpu", torch.float32).contiguous()
    return out
