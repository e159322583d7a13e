"""The inference stage: resolve the version, admit the request, enqueue, wait for the reply.
Routes call this; it owns no HTTP details beyond the typed errors."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from model_store.registry import ResolvedVersion
from model_store.signature import Signature
from service.errors import (
    DeadlineExceeded,
    InvalidInput,
    KilnError,
    ModelFailed,
    Unavailable,
    from_engine,
)
from service.inference.oip import (
    EncodedResponse,
    ParsedRequest,
    encode_response,
    parse_infer_request,
)
from service.inference.oip_bytes import BytesLimits
from service.inference.policy import RequestPolicy, request_policy
from service.inference.versions import VersionResolver
from service.metrics import GatewayMetrics
from service.request_id import current_or_new
from service.settings import Settings
from service.tenancy import access
from service.tenancy.admission import Admission
from service.tenancy.api_keys import Principal
from workers.contract.errors import EngineError
from workers.contract.jsonlog import request_log
from workers.contract.messages import EngineClient, ErrorCode, InferReplyMsg, InferRequestMsg
from workers.contract.redis_keys import RedisKeys

T = TypeVar("T")
# the last stage of a request, once its model is checked, its version resolved and it is admitted
Stage = Callable[[Principal, ResolvedVersion, bytes, int | None], Awaitable[T]]

_REPLY_ERRORS: dict[str, type[KilnError]] = {
    ErrorCode.INVALID_INPUT: InvalidInput,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    ErrorCode.MODEL_ERROR: ModelFailed,
    ErrorCode.DEAD_LETTERED: ModelFailed,
    ErrorCode.LOAD_FAILED: Unavailable,
    ErrorCode.UNAVAILABLE: Unavailable,
}


class InferenceService:
    """One submit path for synchronous and asynchronous requests (service/inference/async_jobs.py):
    `admitted` checks, resolves and admits; `message` builds what goes on the queue."""

    def __init__(
        self,
        settings: Settings,
        resolver: VersionResolver,
        engine: EngineClient,
        keys: RedisKeys,
        metrics: GatewayMetrics,
        admission: Admission | None = None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.engine = engine
        self.keys = keys
        self.metrics = metrics
        self.admission = admission
        self.bytes_limits = BytesLimits(settings.max_bytes_elements, settings.max_bytes_tensor_bytes)
        self._decoders: CapacityLimiter | None = None  # threads for large bodies, made on first use

    async def parse(self, body: bytes, sig: Signature, header_len: int | None) -> ParsedRequest:
        """Decode and check a request body; one over `decode_thread_bytes` in a worker thread of
        its own small pool, so that decoding it does not hold up the event loop (and does not take
        the threads that database calls use)."""
        args = (body, sig, self.settings.max_tensor_elements, header_len, self.bytes_limits)
        if len(body) <= self.settings.decode_thread_bytes:
            return parse_infer_request(*args)
        if self._decoders is None:
            self._decoders = CapacityLimiter(2)
        return await anyio.to_thread.run_sync(parse_infer_request, *args, limiter=self._decoders)

    async def infer(
        self, principal: Principal, model: str, ref: str | None, body: bytes, header_len: int | None = None
    ) -> EncodedResponse:
        """Run a request and wait for its reply."""
        return await self.admitted(principal, model, ref, body, header_len, self._infer)

    async def admitted(
        self,
        principal: Principal,
        model: str,
        ref: str | None,
        body: bytes,
        header_len: int | None,
        stage: Stage[T],
    ) -> T:
        """Check the key's allowlist, resolve the version, admit (rate limits, concurrency,
        quotas), then run `stage`; the admission is held until it returns."""
        access.check_model(principal, model)  # here too: the fast path skips the route dependencies
        version = await self.resolver.resolve(principal.tenant_id, model, ref)
        if self.admission is None:
            return await stage(principal, version, body, header_len)
        try:
            ticket = await self.admission.admit(principal, self.settings.request_timeout_s)
        except KilnError as exc:  # 429 (or 503: the limiter's Redis is down)
            self.metrics.failed(version.model, version.version, exc.code, principal.tenant_id)
            raise
        try:
            return await stage(principal, version, body, header_len)
        finally:
            await self.admission.release(ticket)

    def message(
        self,
        principal: Principal,
        version: ResolvedVersion,
        parsed: ParsedRequest,
        reply_to: str,
        request_id: str,
    ) -> tuple[RequestPolicy, InferRequestMsg]:
        """Where the request goes (stream, bound, timeout, priority) and the message itself."""
        policy = request_policy(version, parsed.parameters, principal, self.keys, self.settings)
        return policy, build_message(principal, parsed, policy, reply_to, request_id)

    async def _infer(
        self, principal: Principal, version: ResolvedVersion, body: bytes, header_len: int | None
    ) -> EncodedResponse:
        request_id = current_or_new()
        started = time.perf_counter()
        try:
            parsed = await self.parse(body, version.signature, header_len)
            reply = await self._roundtrip(principal, version, parsed, request_id)
        except KilnError as exc:
            self.metrics.failed(version.model, version.version, exc.code, principal.tenant_id)
            _log_request(request_id, principal, version, exc.code, started)
            raise
        self.metrics.ok(version.model, version.version, time.perf_counter() - started, principal.tenant_id)
        _log_request(request_id, principal, version, "success", started, reply.worker)
        return encode_response(version, parsed, reply)

    async def _roundtrip(
        self, principal: Principal, version: ResolvedVersion, parsed: ParsedRequest, request_id: str
    ) -> InferReplyMsg:
        policy, msg = self.message(principal, version, parsed, self.engine.reply_stream, request_id)
        self.metrics.pending.inc()
        try:
            await self.engine.submit(policy.stream, msg, bound=policy.bound)
            reply = await self.engine.wait(msg.request_id, policy.timeout_s)
        except EngineError as exc:
            raise from_engine(exc) from exc
        finally:
            self.metrics.pending.dec()
        check_reply(reply)
        return reply


def build_message(
    principal: Principal, parsed: ParsedRequest, policy: RequestPolicy, reply_to: str, request_id: str = ""
) -> InferRequestMsg:
    now_ms = int(time.time() * 1000)
    return InferRequestMsg(
        request_id=request_id or uuid.uuid4().hex,
        reply_to=reply_to,
        deadline_ms=now_ms + int(policy.timeout_s * 1000),
        enqueued_ms=now_ms,
        tenant_id=principal.tenant_id,
        inputs=parsed.inputs,
        tensors=parsed.tensors,
        outputs=parsed.outputs,
        parameters=parsed.parameters,
        priority=policy.priority,
        key_id=principal.key_id,
    )


def check_reply(reply: InferReplyMsg) -> None:
    """Raise the typed error a failed reply stands for."""
    if not reply.ok:
        raise _REPLY_ERRORS.get(reply.error_code, ModelFailed)(reply.error)


def _log_request(
    request_id: str,
    principal: Principal,
    version: ResolvedVersion,
    outcome: str,
    started: float,
    worker: str = "",
) -> None:
    if request_log.isEnabledFor(logging.INFO):
        request_log.info(
            "infer %s",
            outcome,
            extra={
                "request_id": request_id,
                "tenant": principal.tenant_id,
                "model": version.model,
                "version": version.version,
                "outcome": outcome,
                "worker": worker,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )
