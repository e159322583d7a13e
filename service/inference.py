"""The inference stage: resolve the version, admit the request, enqueue, wait for the reply.
Routes call this; it owns no HTTP details beyond the typed errors."""

from __future__ import annotations

import time
import uuid

from model_store.registry import ResolvedVersion
from service.errors import (
    DeadlineExceeded,
    InvalidInput,
    KilnError,
    ModelFailed,
    Unavailable,
    from_engine,
)
from service.keys import Principal
from service.metrics import GatewayMetrics
from service.oip import (
    EncodedResponse,
    ParsedRequest,
    encode_response,
    parse_infer_request,
)
from service.policy import RequestPolicy, request_policy
from service.settings import Settings
from service.versions import VersionResolver
from workers.contract import EngineClient, ErrorCode, InferReplyMsg, InferRequestMsg
from workers.errors import EngineError
from workers.keys import Keys

_REPLY_ERRORS: dict[str, type[KilnError]] = {
    ErrorCode.INVALID_INPUT: InvalidInput,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    ErrorCode.MODEL_ERROR: ModelFailed,
    ErrorCode.DEAD_LETTERED: ModelFailed,
    ErrorCode.LOAD_FAILED: Unavailable,
    ErrorCode.UNAVAILABLE: Unavailable,
}


class InferenceService:
    def __init__(
        self,
        settings: Settings,
        resolver: VersionResolver,
        engine: EngineClient,
        keys: Keys,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.engine = engine
        self.keys = keys
        self.metrics = metrics

    async def infer(
        self, principal: Principal, model: str, ref: str | None, body: bytes, header_len: int | None = None
    ) -> EncodedResponse:
        version = await self.resolver.resolve(principal.tenant_id, model, ref)
        started = time.perf_counter()
        try:
            parsed = parse_infer_request(
                body, version.signature, self.settings.max_tensor_elements, header_len
            )
            reply = await self._roundtrip(principal, version, parsed)
        except KilnError as exc:
            self.metrics.failed(version.model, version.version, exc.code)
            raise
        self.metrics.ok(version.model, version.version, time.perf_counter() - started)
        return encode_response(version, parsed, reply)

    async def _roundtrip(
        self, principal: Principal, version: ResolvedVersion, parsed: ParsedRequest
    ) -> InferReplyMsg:
        policy = request_policy(version, parsed.parameters, principal, self.keys, self.settings)
        msg = build_message(principal, parsed, policy, self.engine.reply_stream)
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
    )


def check_reply(reply: InferReplyMsg) -> None:
    """Raise the typed error a failed reply stands for."""
    if not reply.ok:
        raise _REPLY_ERRORS.get(reply.error_code, ModelFailed)(reply.error)
