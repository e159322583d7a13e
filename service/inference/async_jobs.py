"""Asynchronous inference (`Prefer: respond-async`): accept, answer 202 with a request id and
a Location, let the client fetch the result later.

Each asynchronous request has its own stream: the gateway writes the request's record first
(tenant, model, how to encode the answer), the worker appends its reply to the same stream.
Results live in Redis, not in the gateway, so any gateway can answer the GET and a gateway
restart loses nothing; they expire after `async_result_ttl_s`.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from model_store.registry import ResolvedVersion
from model_store.signature import Signature, VersionConfig
from service.errors import DeadlineExceeded, NotFound, Unavailable, from_engine
from service.inference.oip import EncodedResponse, ParsedRequest, encode_response
from service.inference.policy import request_policy
from service.inference.sync import InferenceService, build_message, check_reply
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
    def __init__(self, service: InferenceService, redis: aioredis.Redis, ttl_s: int) -> None:
        self.service = service
        self.redis = redis
        self.ttl_s = ttl_s

    async def submit(
        self, principal: Principal, model: str, ref: str | None, body: bytes, header_len: int | None
    ) -> Accepted:
        svc = self.service
        access.check_model(principal, model)  # the same checks as the synchronous path
        version = await svc.resolver.resolve(principal.tenant_id, model, ref)
        if svc.admission is not None:  # rate limits and quotas count it; nothing is held open
            await svc.admission.release(await svc.admission.admit(principal, svc.settings.request_timeout_s))
        parsed = await svc.parse(body, version.signature, header_len)
        policy = request_policy(version, parsed.parameters, principal, svc.keys, svc.settings)
        request_id = uuid.uuid4().hex
        result = svc.keys.async_result(request_id)
        msg = build_message(principal, parsed, policy, result, request_id)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                record = _record(principal, model, version, parsed, msg.deadline_ms)
                pipe.xadd(result, {b"record": record})
                pipe.expire(result, self.ttl_s)
                await pipe.execute()
            await svc.engine.submit(policy.stream, msg, bound=policy.bound)
        except (RedisError, OSError) as exc:
            raise Unavailable("inference queue is unavailable", retry_after=1) from exc
        except EngineError as exc:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(result)
            raise from_engine(exc) from exc
        finally:
            await svc.engine.cancel(request_id)  # nobody waits here: the reply goes to the stream
        return Accepted(request_id, f"/v1/async/{request_id}")

    async def result(self, principal: Principal, request_id: str) -> EncodedResponse | None:
        """The encoded response; None while pending; NotFound if unknown, expired or not ours."""
        if not _ID.match(request_id):
            raise NotFound("no such request")
        try:
            entries: Any = await self.redis.xrange(self.service.keys.async_result(request_id), count=2)
        except (RedisError, OSError) as exc:
            raise Unavailable("inference queue is unavailable", retry_after=1) from exc
        if not entries or b"record" not in entries[0][1]:
            raise NotFound("no such request (or its result has expired)")
        record = orjson.loads(entries[0][1][b"record"])
        if record["tenant"] != principal.tenant_id:
            raise NotFound("no such request (or its result has expired)")
        access.check_model(principal, record.get("asked", record["model"]))
        if len(entries) < 2:
            if time.time() * 1000 > record["deadline"] + _GRACE_MS:  # no worker ever answered
                raise DeadlineExceeded("request deadline exceeded")
            return None
        try:
            reply = InferReplyMsg.from_fields(entries[1][1])
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
