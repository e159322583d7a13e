"""The generation stage: resolve the model, check the key, admit (request and token limits),
put a GenRequestMsg on the version's generation stream, then read its chunks. Owns no HTTP
details beyond the typed errors; service/text/streaming.py writes the responses."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio

from model_store import errors as store_errors
from model_store.registry import ResolvedVersion
from service.errors import (
    DeadlineExceeded,
    InvalidInput,
    KilnError,
    ModelFailed,
    NotFound,
    Unavailable,
    WorkerLost,
    from_engine,
)
from service.inference.versions import VersionResolver
from service.request_id import current_or_new
from service.settings import Settings
from service.tenancy import access
from service.tenancy.admission import Admission, Ticket
from service.tenancy.api_keys import Principal
from service.tenancy.token_limits import TokenLimiter
from service.text.metrics import text_metrics
from workers.contract.errors import EngineError
from workers.contract.generation import (
    AdapterRef,
    GenChunkMsg,
    GenErrorCode,
    GenParams,
    GenRequestMsg,
    GenUsage,
)
from workers.contract.messages import EngineClient
from workers.contract.redis_keys import RedisKeys

GEN_FORMAT = "hf-causal-lm"
ADAPTER_FORMAT = "lora-adapter"  # served on its base's stream (model_store/lora_adapter.py)


class ContextLengthExceeded(InvalidInput):
    code = "context_length_exceeded"


_CHUNK_ERRORS: dict[str, type[KilnError]] = {
    GenErrorCode.INVALID_INPUT: InvalidInput,
    GenErrorCode.CONTEXT_LENGTH: ContextLengthExceeded,
    GenErrorCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    GenErrorCode.MODEL_ERROR: ModelFailed,
    GenErrorCode.LOAD_FAILED: Unavailable,
    GenErrorCode.UNAVAILABLE: Unavailable,
    GenErrorCode.WORKER_LOST: WorkerLost,
}


def chunk_error(chunk: GenChunkMsg) -> KilnError:
    """The typed error a failed (or cancelled) chunk stands for."""
    if chunk.finish == "cancelled":
        return Unavailable("the generation was cancelled", retry_after=1)
    return _CHUNK_ERRORS.get(chunk.code, ModelFailed)(chunk.error or "generation failed")


def split_model(model: str) -> tuple[str, str | None]:
    """`name`, `name:version`, `name:alias`, `owner~name[:ref]` -> (name, ref or None)."""
    name, sep, ref = model.partition(":")
    if not name or (sep and not ref):
        raise InvalidInput("model must be 'name', 'name:version' or 'name:alias'")
    return name, ref or None


@dataclass(slots=True)
class Job:
    """What a generation needs besides its admission: mode, text and parameters."""

    model: str  # as the client named it
    mode: str  # "chat" | "completion"
    params: GenParams
    stream: bool
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None


@dataclass(slots=True)
class Generation:
    """One submitted generation: read its chunks with `next`, end it with `close` (always)."""

    service: TextService
    principal: Principal
    version: ResolvedVersion
    request_id: str
    ticket: Ticket | None
    chunks: Any  # AsyncIterator[GenChunkMsg]
    started: float = 0.0  # time.perf_counter() at submit
    usage: GenUsage | None = None
    done: bool = False
    failed: bool = False
    closed: bool = False
    completion_tokens: int = 0

    async def next(self) -> GenChunkMsg | None:
        """The next chunk (None after the last); a failed chunk or a lost queue raises KilnError."""
        if self.done:
            return None
        try:
            chunk: GenChunkMsg = await anext(self.chunks)
        except StopAsyncIteration:
            self.done = True
            return None
        except EngineError as exc:
            self.failed = True
            raise from_engine(exc) from exc
        if chunk.seq == 0:
            self.service.metrics.first(self.version.model, self.version.version, self._elapsed())
        self.done = chunk.done
        if chunk.finish in ("error", "cancelled"):
            self.failed = True
            raise chunk_error(chunk)
        self.completion_tokens += chunk.tokens
        if chunk.usage is not None:
            self.usage = chunk.usage
        return chunk

    async def close(self) -> None:
        """Forget the queue (cancelling the worker's sequence if it has not finished), release
        the admission, debit the tokens. Idempotent; runs even in a cancelled task."""
        if self.closed:
            return
        self.closed = True
        self._record()
        with anyio.CancelScope(shield=True):
            svc = self.service
            await svc.engine.finish_gen(self.request_id, cancel=not self.done)
            if svc.admission is not None:
                await svc.admission.release(self.ticket)
            if svc.tokens is not None:
                spent = self.usage.total_tokens if self.usage is not None else self.completion_tokens
                await svc.tokens.debit(self.principal, spent)

    def _elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _record(self) -> None:
        outcome = "failed" if self.failed else "finished" if self.done else "cancelled"
        usage = self.usage or GenUsage(0, self.completion_tokens)
        v = self.version
        self.service.metrics.ended(
            v.model, v.version, outcome, self._elapsed(), usage.prompt_tokens, usage.completion_tokens
        )


class TextService:
    def __init__(
        self,
        settings: Settings,
        resolver: VersionResolver,
        engine: EngineClient,
        keys: RedisKeys,
        admission: Admission | None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.engine = engine
        self.keys = keys
        self.admission = admission
        self.tokens = TokenLimiter(admission.redis, keys) if admission is not None else None
        self.metrics = text_metrics()

    async def resolve(self, principal: Principal, model: str, fmt: str, what: str) -> ResolvedVersion:
        """The version `model` names, as the OIP routes resolve it (the key's allowlist, models
        shared by other tenants as `owner~name`); 400 unless it is of format `fmt`."""
        name, ref = split_model(model)
        access.check_model(principal, name)
        version = await self.resolver.resolve(principal.tenant_id, name, ref)
        _check_format(model, version, fmt, what)
        return version

    async def resolve_generation(
        self, principal: Principal, model: str, what: str
    ) -> tuple[ResolvedVersion, ResolvedVersion | None]:
        """(the version whose generation stream serves `model`, the lora-adapter `model` names or
        None). An adapter is resolved (and its visibility, grants and the key's allowlist checked)
        like any model; it runs on its base (lineage `adapter_of`), which must be hf-causal-lm."""
        name, ref = split_model(model)
        access.check_model(principal, name)
        version = await self.resolver.resolve(principal.tenant_id, name, ref)
        if version.format != ADAPTER_FORMAT:
            _check_format(model, version, GEN_FORMAT, what)
            return version, None
        if version.adapter_of is None:
            raise Unavailable(f"adapter {model[:64]!r} names no base model version", retry_after=None)
        return await self.adapter_base(model, version.adapter_of, GEN_FORMAT, what), version

    async def adapter_base(self, model: str, base_id: int, fmt: str, what: str) -> ResolvedVersion:
        """The base version a lora-adapter runs on (cached like resolutions): 404 when it is gone,
        400 unless it is of format `fmt` (the route's)."""
        try:
            base = await self.resolver.by_id(base_id)
        except store_errors.NotFound as exc:
            raise NotFound(f"the base model of adapter {model[:64]!r} no longer exists") from exc
        if base.format != fmt:
            raise InvalidInput(
                f"model {model[:64]!r} is a lora-adapter of a {base.format} model; "
                f"{what} needs a model of format {fmt} (or an adapter of one)"
            )
        return base

    def check_size(self, messages: int, chars: int) -> None:
        if messages > self.settings.max_chat_messages:
            raise InvalidInput(f"messages: at most {self.settings.max_chat_messages} messages")
        if chars > self.settings.max_prompt_chars:
            raise InvalidInput(f"the prompt is over {self.settings.max_prompt_chars} characters")

    async def start(self, principal: Principal, job: Job) -> Generation:
        """Resolve, admit and submit; the caller reads the chunks and closes the generation."""
        what = "/v1/chat/completions" if job.mode == "chat" else "/v1/completions"
        served, adapter = await self.resolve_generation(principal, job.model, what)
        if self.tokens is not None:
            await self.tokens.check(principal)
        timeout = self.settings.generation_timeout_s
        ticket = await self.admission.admit(principal, timeout) if self.admission is not None else None
        request_id = current_or_new()
        now_ms = int(time.time() * 1000)
        msg = GenRequestMsg(
            request_id=request_id,
            reply_to=self.engine.reply_stream,
            deadline_ms=now_ms + int(timeout * 1000),
            enqueued_ms=now_ms,
            tenant_id=principal.tenant_id,
            key_id=principal.key_id,
            model=job.model,
            mode="chat" if job.mode == "chat" else "completion",
            stream=job.stream,
            params=job.params,
            messages=job.messages,
            prompt=job.prompt,
            adapter=None if adapter is None else AdapterRef(adapter.version_id, adapter.sha256),
        )
        try:
            await self.engine.submit_gen(self.keys.gen_stream(served.version_id), msg)
        except EngineError as exc:
            if self.admission is not None:
                await self.admission.release(ticket)
            raise from_engine(exc) from exc
        chunks = self.engine.gen_chunks(request_id, timeout)
        version = adapter or served  # metrics name the model asked for
        return Generation(self, principal, version, request_id, ticket, chunks, time.perf_counter())


def _check_format(model: str, version: ResolvedVersion, fmt: str, what: str) -> None:
    if version.format != fmt:
        raise InvalidInput(
            f"model {model[:64]!r} has format {version.format}; {what} needs a model of format {fmt}"
        )
