"""The in-process generation engine: one loaded causal LM behind transformers' continuous
batching (a paged KV cache; sequences join and leave the running batch every step).

`Engine` implements `GenerationBackend` (workers/generation/backend.py). It runs in the fenced
child (host.py), or in the worker itself with KILN_FENCE=off.

What continuous batching gives per request and what this engine does with it:
- temperature, top_p, top_k: per request (`per_request_processors`); the manager is built with
  non-default values so that each warper exists, and every request passes its own values.
- greedy (temperature 0): sampling with top_k = 1, which leaves one token with any probability:
  the argmax, deterministically (CB's do_sample is one switch for the whole manager).
- seed: CB seeds its one generator for the whole manager; a request's seed is not honoured
  (OpenAI documents seed as best effort).
- n > 1: n sequences of the same prompt (ids "<request>:<i>"), sharing prefix blocks.
- logprobs: refused (CB's are of the processed distribution, not the model's).
- stop sequences and detokenisation: workers/generation/text.py; a sequence that hits a stop
  is cancelled in CB at once.
- a request with a LoRA adapter (`req.adapter`) runs on this same model, in the same batch as
  the others, its tokens through its adapter's low-rank updates (adapters.py); up to
  `max_adapters` adapters are held (least recently used evicted, never one a request runs on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from model_store.limits import ArtifactLimits
from workers.common.causal_model import LoadedModel
from workers.contract.generation import GenErrorCode, GenParams, GenRequestMsg, GenUsage
from workers.generation.adapters import EngineAdapters
from workers.generation.backend import AdapterBytes, GenEvent, GenInputError, GenStats
from workers.generation.prompts import prompt_ids, sampling
from workers.generation.text import Detokenizer, StopText


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Sizes of the paged cache and batch. None: transformers infers them from free GPU memory
    (CUDA); on CPU the defaults below apply."""

    page_size: int | None = None
    num_blocks: int | None = None
    max_batch_tokens: int | None = None
    max_requests_per_batch: int | None = None
    max_memory_percent: float = 0.6  # of free GPU memory, for the KV cache
    seed: int | None = None
    max_adapters: int = 8  # LoRA adapters held at once (0: none served)

    def cb_config(self, device: str) -> Any:
        """transformers' ContinuousBatchingConfig for this device. Fields it lacks are left out
        (before 5.17 the page size was `block_size`)."""
        import dataclasses

        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        cpu = not device.startswith("cuda")
        wanted: dict[str, Any] = {
            "page_size": self.page_size or (32 if cpu else 256),
            "num_blocks": self.num_blocks or (256 if cpu else None),
            "max_batch_tokens": self.max_batch_tokens or (512 if cpu else None),
            "max_requests_per_batch": self.max_requests_per_batch or (64 if cpu else None),
            "max_memory_percent": self.max_memory_percent,
            "per_request_processors": True,
            "return_logprobs": False,
            "use_cuda_graph": False if cpu else None,
            "seed": self.seed,
        }
        if self.max_adapters > 0:  # the batch run must be the batch prepared; no KV shared across adapters
            wanted.update(use_async_batching=False, allow_block_sharing=False, use_cuda_graph=False)
        known = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
        if "page_size" not in known:
            wanted["block_size"] = wanted.pop("page_size")
        return ContinuousBatchingConfig(**{k: v for k, v in wanted.items() if k in known})


@dataclass(slots=True)
class _Choice:
    request_id: str
    index: int
    detok: Detokenizer
    stop: StopText
    seen: int = 0  # generated tokens read so far
    pending: int = 0  # tokens not yet counted in an event
    done: bool = False


@dataclass(slots=True)
class _Request:
    prompt_tokens: int
    choices: list[_Choice]
    completion_tokens: int = 0
    open: int = 0
    first_sent: bool = False
    slot: int = -1  # its adapter's slot (-1: the base alone)


class Engine:
    def __init__(
        self, loaded: LoadedModel, options: EngineOptions | None = None, limits: ArtifactLimits | None = None
    ) -> None:
        from transformers import GenerationConfig

        options = options or EngineOptions()
        self._m = loaded
        self._vocab = int(loaded.model.config.vocab_size)
        gen = GenerationConfig(
            do_sample=True, temperature=0.7, top_k=50, top_p=0.9, eos_token_id=loaded.eos_ids or -1
        )
        device = str(loaded.model.device)
        self._mgr = loaded.model.init_continuous_batching(
            generation_config=gen, continuous_batching_config=options.cb_config(device)
        )
        self.adapters: EngineAdapters | None = None
        if options.max_adapters > 0:
            self.adapters = EngineAdapters(
                loaded.model, options.max_adapters, limits or ArtifactLimits(), self._batch
            )
        self._mgr.start()
        self._requests: dict[str, _Request] = {}
        self._choices: dict[str, tuple[_Request, _Choice]] = {}  # by CB request id
        self._ready: list[GenEvent] = []  # events made outside a CB output (cancel, errors)

    @property
    def context_length(self) -> int:
        return self._m.context_length

    @property
    def busy(self) -> bool:
        """Whether any request is running or any event waits to be polled."""
        return bool(self._requests) or bool(self._ready)

    @property
    def device(self) -> str:
        return str(self._m.model.device)

    def _batch(self) -> object:
        return getattr(getattr(self._mgr, "batch_processor", None), "inputs_and_outputs", None)

    def submit(self, req: GenRequestMsg, adapters: AdapterBytes | None = None) -> None:
        """Start `req`; `adapters` gives the bytes of an adapter this engine does not hold yet
        (without it such a request raises adapters.NeedAdapter)."""
        p = req.params
        try:
            p.check()
        except ValueError as exc:
            raise GenInputError(str(exc)) from exc
        if p.logprobs is not None:
            raise GenInputError("logprobs are not supported for this model")
        if req.request_id in self._requests:
            raise GenInputError("a request with this id is already running")
        ids = prompt_ids(self._m.tokenizer, req)
        max_new = self._max_new(len(ids), p, req.mode)
        state = _Request(prompt_tokens=len(ids), choices=[], open=p.n, slot=self._slot(req, adapters))
        self._requests[req.request_id] = state
        kwargs = sampling(p, self._vocab)
        for i in range(p.n):
            choice = _Choice(req.request_id, i, Detokenizer(self._m.tokenizer, ids), StopText(p.stop))
            state.choices.append(choice)
            self._choices[f"{req.request_id}:{i}"] = (state, choice)
            if state.slot >= 0 and self.adapters is not None:
                self.adapters.bind(f"{req.request_id}:{i}", state.slot)
            taken = self._mgr.add_request(
                ids, request_id=f"{req.request_id}:{i}", max_new_tokens=max_new, streaming=True, **kwargs
            )
            if taken is None:  # the generation loop has stopped: the request ends in error
                event = GenEvent(
                    req.request_id, i, code=GenErrorCode.MODEL_ERROR, error="the model is not running"
                )
                self._ready.append(self._finish(state, choice, event, "error"))

    def _slot(self, req: GenRequestMsg, adapters: AdapterBytes | None) -> int:
        if req.adapter is None:
            return -1
        if self.adapters is None:
            raise GenInputError("this worker serves no LoRA adapters", GenErrorCode.UNAVAILABLE)
        return self.adapters.acquire(req.adapter, adapters)

    def _max_new(self, prompt: int, p: GenParams, mode: str) -> int:
        ctx = self.context_length
        wanted = p.max_tokens if p.max_tokens is not None else max(ctx - prompt, 1)
        if prompt + wanted > ctx:
            where = "messages" if mode == "chat" else "prompt"
            raise GenInputError(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{prompt + wanted} tokens ({prompt} in the {where}, {wanted} in the completion). "
                f"Please reduce the length of the {where} or completion.",
                GenErrorCode.CONTEXT_LENGTH,
            )
        return wanted

    def cancel(self, request_id: str) -> None:
        state = self._requests.get(request_id)
        if state is None:
            return
        for choice in state.choices:
            if not choice.done:
                self._mgr.cancel_request(f"{request_id}:{choice.index}")
                self._ready.append(
                    self._finish(state, choice, GenEvent(request_id, choice.index), "cancelled")
                )

    def poll(self, timeout_s: float) -> list[GenEvent]:
        events, self._ready = self._ready, []
        wait = 0.0 if events else timeout_s
        deadline = time.monotonic() + wait
        while True:
            out = self._mgr.get_result(timeout=max(deadline - time.monotonic(), 0.0) if not events else 0.0)
            if out is None:
                break
            events.extend(self._on_output(out))
        if not events and not self._alive():
            events = self._fail_all(GenErrorCode.MODEL_ERROR, "the generation loop stopped")
        return events

    @property
    def broken(self) -> bool:
        """Whether the generation loop has died (every request then ends in error)."""
        return not self._alive()

    def _alive(self) -> bool:
        thread = getattr(self._mgr, "_generation_thread", None)
        return thread is not None and thread.is_alive()

    def _on_output(self, out: Any) -> list[GenEvent]:
        found = self._choices.get(out.request_id)
        if found is None or found[1].done:
            return []  # cancelled, or ended on a stop sequence: CB may still send a step
        state, choice = found
        if out.error is not None:
            event = GenEvent(choice.request_id, choice.index)
            event.code, event.error = GenErrorCode.MODEL_ERROR, "the model failed while generating"
            return [self._finish(state, choice, event, "error")]
        new = list(out.generated_tokens[choice.seen :])
        choice.seen += len(new)
        choice.pending += len(new)
        state.completion_tokens += len(new)
        text = choice.stop.push(choice.detok.add(new))
        finish = "stop" if choice.stop.stopped else None
        if finish is None and out.is_finished():
            text += choice.stop.push(choice.detok.flush())
            text += choice.stop.flush()
            last = out.generated_tokens[-1] if out.generated_tokens else -1
            finish = "stop" if choice.stop.stopped or last in self._m.eos_ids else "length"
        elif finish is not None:
            self._mgr.cancel_request(out.request_id)
        first = bool(new) and not state.first_sent
        if not (text or finish or first):
            return []
        event = GenEvent(choice.request_id, choice.index, text=text, first_token=first)
        state.first_sent = state.first_sent or first
        return [self._finish(state, choice, event, finish) if finish else self._count(choice, event)]

    @staticmethod
    def _count(choice: _Choice, event: GenEvent) -> GenEvent:
        event.tokens, choice.pending = choice.pending, 0
        return event

    def _finish(self, state: _Request, choice: _Choice, event: GenEvent, finish: str) -> GenEvent:
        """The choice's last event; the request's last (done, usage) when no choice is left open."""
        self._count(choice, event)
        event.finish = finish
        choice.done = True
        self._choices.pop(f"{choice.request_id}:{choice.index}", None)
        if self.adapters is not None and state.slot >= 0:
            self.adapters.unbind(f"{choice.request_id}:{choice.index}")
        state.open -= 1
        if state.open == 0:
            if self.adapters is not None and state.slot >= 0:
                self.adapters.release(state.slot)
            event.done = True
            event.usage = GenUsage(state.prompt_tokens, state.completion_tokens)
            self._requests.pop(choice.request_id, None)
        return event

    def _fail_all(self, code: str, message: str) -> list[GenEvent]:
        events = []
        for request_id, state in list(self._requests.items()):
            for choice in state.choices:
                if not choice.done:
                    event = GenEvent(request_id, choice.index, code=code, error=message)
                    events.append(self._finish(state, choice, event, "error"))
        return events

    def stats(self) -> GenStats:
        stats = cb_stats(self._mgr)
        if self.adapters is not None:
            a = self.adapters
            stats.extra = {"adapters": a.loaded, "adapter_loads": a.loads, "adapter_evictions": a.evictions}
        return stats

    def close(self) -> None:
        self._ready.extend(self._fail_all(GenErrorCode.UNAVAILABLE, "the model was unloaded"))
        try:
            self._mgr.stop(block=True, timeout=10)
        finally:
            self._m.model.destroy_cached_continuous_batching_manager()
            if self.adapters is not None:
                self.adapters.close()


def cb_stats(mgr: Any) -> GenStats:
    """Running and waiting sequences and cache use, read from CB's scheduler and cache (racy
    reads of another thread's state: fit for metrics, not for decisions)."""
    bp = getattr(mgr, "batch_processor", None)
    queued = mgr.input_queue.qsize()
    if bp is None:
        return GenStats(waiting=queued)
    try:
        running = len(bp.scheduler.active_requests)
        waiting = len(bp.scheduler.waiting_requests) + queued
    except (AttributeError, RuntimeError, TypeError):
        return GenStats(waiting=queued)
    return GenStats(running=running, waiting=waiting, kv_cache_usage=_cache_usage(bp))


def _cache_usage(bp: Any) -> float:
    """Share of the paged cache's sectors in use (0 where this transformers lays its cache out
    otherwise)."""
    try:
        total = int(bp.cache.num_sectors)
        free = int(bp.cache.pool.num_free_sectors)
    except (AttributeError, TypeError, ValueError):
        return 0.0
    return max(0.0, min(1.0 - free / total, 1.0)) if total > 0 else 0.0
