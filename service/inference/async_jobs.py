"""Asynchronous inference (`Prefer: respond-async`): accept, answer 202 with a request id and
a Location, let the client fetch the result later.

Each asynchronous request has its own stream: the gateway writes the request's record first
(tenant, model, how to encode the answer), the worker appends its reply to the same stream.
Results live in Redis, not in the gateway, so any gateway can answer the GET and a gateway
restart loses nothing; they expire after `async_result_ttl_s`.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from model_store.registry import ResolvedVersion
from model_store.signature import Signature, VersionConfig
from service.errors import DeadlineExceeded, NotFound, Unavailable, from_engine
from service.inference.oip import EncodedResponse, ParsedRequest, encode_response
from service.inference.sync import InferenceService, Stage, check_reply
from service.tenancy import access
from service.tenancy.api_keys import Principal
from workers.contract.errors import EngineError
from workers.contract.messages import ContractError, InferReplyMsg

_ID = re.compile(r"^[0-9a-f]{32}$")
_GRACE_MS = 5000  # a worker that dropped the request as expired answers within this


@dataclass(frozen=True, slots=True)
class Accepted:
    request_id: str
    location: str


def wants_async(prefer: str | None) -> bool:
    return prefer is not None and "respond-async" in prefer.lower()


class AsyncInference:
    def __init__(self, service: InferenceService, ttl_s: int) -> None:
        self.service = service
        self.ttl_s = ttl_s

    async def submit(
        self, principal: Principal, model: str, ref: str | None, body: bytes, header_len: int | None
    ) -> Accepted:
        """The synchronous path's checks and admission (InferenceService.admitted), then enqueue
        with the reply going to the request's own result stream; nothing is held open."""
        return await self.service.admitted(principal, model, ref, body, header_len, self._stage(model))

    def _stage(self, asked: str) -> Stage[Accepted]:
        async def accept(
            principal: Principal, version: ResolvedVersion, body: bytes, header_len: int | None
        ) -> Accepted:
            svc = self.service
            parsed = await svc.parse(body, version.signature, header_len)
            request_id = uuid.uuid4().hex
            policy, msg = svc.message(
                principal, version, parsed, svc.keys.async_result(request_id), request_id
            )
            record = _record(principal, asked, version, parsed, msg.deadline_ms)
            try:
                await svc.engine.submit_async(policy.stream, msg, record, self.ttl_s, bound=policy.bound)
            except EngineError as exc:
                raise from_engine(exc) from exc
            return Accepted(request_id, f"/v1/async/{request_id}")

        return accept

    async def result(self, principal: Principal, request_id: str) -> EncodedResponse | None:
        """The encoded response; None while pending; NotFound if unknown, expired or not ours."""
        if not _ID.match(request_id):
            raise NotFound("no such request")
        try:
            found = await self.service.engine.async_result(request_id)
        except EngineError as exc:
            raise from_engine(exc) from exc
        if found is None:
            raise NotFound("no such request (or its result has expired)")
        raw_record, raw_reply = found
        record = orjson.loads(raw_record)
        if record["tenant"] != principal.tenant_id:
            raise NotFound("no such request (or its result has expired)")
        access.check_model(principal, record.get("asked", record["model"]))
        if raw_reply is None:
            if time.time() * 1000 > record["deadline"] + _GRACE_MS:  # no worker ever answered
                raise DeadlineExceeded("request deadline exceeded")
            return None
        try:
            reply = InferReplyMsg.from_fields(raw_reply)
        except ContractError as exc:
            raise Unavailable("the stored result is unreadable") from exc
        check_reply(reply)
        version, parsed = _restore(record)
        return encode_response(version, parsed, reply)


def _record(
    principal: Principal, asked: str, version: ResolvedVersion, parsed: ParsedRequest, deadline_ms: int
) -> bytes:
    return orjson.dumps(
        {
            "tenant": principal.tenant_id,
            "asked": asked,  # the model as the caller named it: the allowlist applies to the result too
            "deadline": deadline_ms,
            "model": version.model,
            "version": version.version,
            "id": parsed.id,
            "binary": parsed.binary_outputs,
            "binary_default": parsed.binary_default,
        }
    )


_NO_SIGNATURE = Signature.model_validate(
    {
        "inputs": [{"name": "x", "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": "y", "datatype": "BYTES", "shape": [1]}],
    }
)


def _restore(record: dict[str, Any]) -> tuple[ResolvedVersion, ParsedRequest]:
    """Just what encode_response needs: names for the header, how to encode each output."""
    version = ResolvedVersion(
        0, record["tenant"], record["model"], record["version"], "", "", _NO_SIGNATURE, VersionConfig()
    )
    parsed = ParsedRequest(
        id=record["id"],
        inputs=[],
        tensors=[],
        outputs=None,
        binary_outputs=record["binary"],
        binary_default=record["binary_default"],
    )
    return version, parsed
