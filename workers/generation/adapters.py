"""LoRA adapters on a generation engine's base model (the engine's side, torch; in the fenced
child or, with KILN_FENCE=off, in the worker).

An `EngineAdapters` keeps an `AdapterSet` (workers/common/lora.py) over the engine's one copy of
the base model and tells its `LoraLinear` layers which adapter each token of a continuous batch
uses: a forward pre-hook on the model reads the batch transformers' continuous batching is
running (`requests_in_batch`, in the order of `cu_seq_lens_q`), maps each sequence to its
request's adapter slot (-1: the base) and sets that per-token selection for the forward; a
forward hook clears it. So requests of different adapters and of the base share every step.

That needs the batch being prepared to be the batch being run, and KV blocks never shared
between sequences (a key computed under one adapter is wrong under another): the engine builds
its manager with `use_async_batching=False`, `allow_block_sharing=False` and no CUDA graphs
when adapters are on (engine.py).

Adapter bytes come with the request from the worker (which checks them against the digest the
gateway sent: workers/generation/adapter_source.py); the engine checks the digest again and loads
them on first use. A request pins its adapter while it runs.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable
from typing import Any

from model_store.limits import ArtifactLimits
from workers.contract.generation import AdapterRef, GenErrorCode
from workers.generation.backend import AdapterBytes, GenInputError, NeedAdapter


class EngineAdapters:
    """Imported by engine.py, which the torch-free worker imports too: torch and lora.py are
    imported when an engine is built."""

    def __init__(self, model: Any, capacity: int, limits: ArtifactLimits, batch: Callable[[], Any]) -> None:
        """`batch`: the continuous-batching processor's inputs (with `requests_in_batch`), or None."""
        from workers.common.lora import AdapterSet

        self.set = AdapterSet(model, capacity)
        self.limits = limits
        self.loads = 0
        self.mixed = 0  # forwards whose sequences used more than one adapter (or the base and one)
        self._batch = batch
        self._digest: dict[int, str] = {}  # slot (adapter version id) -> sha256 of its bundle
        self._slot_of: dict[str, int] = {}  # CB request id -> adapter slot
        self._lock = threading.Lock()
        self._cm: Any = None
        param = next(model.parameters())
        self._device, self._dtype = param.device, param.dtype
        self._hooks = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, always_call=True),
        ]

    @property
    def loaded(self) -> int:
        return len(self.set.loaded)

    @property
    def evictions(self) -> int:
        return self.set.evictions

    def acquire(self, ref: AdapterRef, source: AdapterBytes | None) -> int:
        """The adapter's slot, loaded if need be, pinned (release it with `release`)."""
        slot = ref.version_id
        from workers.common.lora import AdapterCapacity, AdapterMismatch

        held = self._digest.get(slot) if slot in self.set.loaded else None
        if held is not None and held != ref.sha256:
            raise GenInputError(
                "the adapter's digest differs from the one loaded", GenErrorCode.INVALID_INPUT
            )
        if held is None and source is None:
            raise NeedAdapter(slot)
        try:
            self.set.ensure(slot, lambda: self._read(ref, source))
        except AdapterMismatch as exc:
            raise GenInputError(
                f"the adapter does not fit this model: {exc}", GenErrorCode.INVALID_INPUT
            ) from exc
        except AdapterCapacity as exc:
            raise GenInputError(f"{exc}; retry later", GenErrorCode.UNAVAILABLE) from exc
        self._digest[slot] = ref.sha256
        self.set.pin(slot)
        return slot

    def _read(self, ref: AdapterRef, source: AdapterBytes | None) -> Any:
        from workers.common.lora import AdapterMismatch, read_adapter

        assert source is not None
        data = source(ref)
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise GenInputError("the adapter's bytes do not match its digest", GenErrorCode.LOAD_FAILED)
        try:
            weights = read_adapter(io.BytesIO(data), self.limits, self._device, self._dtype)
        except Exception as exc:  # hostile bytes fail their request, never the engine
            raise GenInputError(
                f"the adapter could not be read: {str(exc)[:200]}", GenErrorCode.LOAD_FAILED
            ) from exc
        if any(path.rsplit(".", 1)[-1] == "lm_head" for path in weights.layers):
            raise AdapterMismatch("an adapter of lm_head is not served (the batch keeps only some logits)")
        self.loads += 1
        return weights

    def bind(self, cb_request_id: str, slot: int) -> None:
        with self._lock:
            self._slot_of[cb_request_id] = slot

    def unbind(self, cb_request_id: str) -> None:
        with self._lock:
            self._slot_of.pop(cb_request_id, None)

    def release(self, slot: int) -> None:
        self.set.unpin(slot)

    def selection(self, length: int, cu_seq_lens_q: Any) -> Any:
        """One slot per token of the running batch's packed input of `length` tokens, or None
        when no sequence in it uses an adapter (or the forward is not a continuous batch's:
        no `cu_seq_lens_q`)."""
        import torch

        ios = self._batch()
        reqs = list(getattr(ios, "requests_in_batch", None) or ())
        with self._lock:
            slots = [self._slot_of.get(fr.state.request_id, -1) for fr in reqs]
        if not reqs or all(s < 0 for s in slots) or cu_seq_lens_q is None:
            return None
        if len(set(slots)) > 1:
            self.mixed += 1
        # each sequence's query length: the diffs of cu_seq_lens_q, read on the host (no device sync)
        lengths = torch.tensor([int(fr.query_length) for fr in reqs], dtype=torch.long)
        per_token = torch.repeat_interleave(torch.tensor(slots, dtype=torch.long), lengths)
        out = torch.full((length,), -1, dtype=torch.long)
        n = min(length, per_token.numel())
        out[:n] = per_token[:n]
        return out.to(self._device)

    def _before(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        cu = kwargs.get("cu_seq_lens_q")
        sel = None if ids is None or cu is None else self.selection(int(ids.shape[-1]), cu)
        if sel is not None:
            from workers.common.lora import selecting

            self._cm = selecting(sel)
            self._cm.__enter__()

    def _after(self, *_: Any) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(None, None, None)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
