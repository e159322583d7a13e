"""The wire contract between gateways and workers: versioned, typed messages.

A request is one stream entry: `v` (contract version), `h` (a JSON header) and one raw
tensor per input (`i0`, `i1`, ...). A reply has the same shape with outputs `o0`, ...
Tensors travel as raw bytes (never base64, never pickle).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from workers.contract.wire import CONTRACT_VERSION, ContractError

if TYPE_CHECKING:
    from workers.contract.generation import GenChunkMsg, GenRequestMsg


class ErrorCode:
    """Failure reasons carried in replies; the gateway maps each to one HTTP status."""

    INVALID_INPUT = "invalid_input"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    MODEL_ERROR = "model_error"
    LOAD_FAILED = "load_failed"
    DEAD_LETTERED = "dead_lettered"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorMeta:
        return cls(str(d["name"]), str(d["datatype"]), tuple(int(x) for x in d["shape"]))


@dataclass(slots=True)
class InferRequestMsg:
    request_id: str
    reply_to: str
    deadline_ms: int  # wall-clock epoch milliseconds: it crosses process boundaries
    enqueued_ms: int
    tenant_id: int
    inputs: list[TensorMeta]
    tensors: list[bytes]
    outputs: list[str] | None = None
    priority: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)
    key_id: int = 0  # optional in contract version 1: the API key charged for usage (0: none)

    def to_fields(self) -> dict[bytes, bytes]:
        header = {
            "id": self.request_id,
            "reply": self.reply_to,
            "deadline": self.deadline_ms,
            "enq": self.enqueued_ms,
            "tenant": self.tenant_id,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": self.outputs,
            "priority": self.priority,
            "params": self.parameters,
        }
        if self.key_id:
            header["key"] = self.key_id
        fields = {b"v": CONTRACT_VERSION, b"h": orjson.dumps(header)}
        for i, buf in enumerate(self.tensors):
            fields[b"i%d" % i] = buf
        return fields

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> InferRequestMsg:
        if fields.get(b"v") != CONTRACT_VERSION:
            raise ContractError(f"unsupported contract version {fields.get(b'v')!r}")
        try:
            h = orjson.loads(fields[b"h"])
            inputs = [TensorMeta.from_json(t) for t in h["inputs"]]
            tensors = [fields[b"i%d" % i] for i in range(len(inputs))]
            return cls(
                request_id=str(h["id"]),
                reply_to=str(h["reply"]),
                deadline_ms=int(h["deadline"]),
                enqueued_ms=int(h["enq"]),
                tenant_id=int(h["tenant"]),
                inputs=inputs,
                tensors=tensors,
                outputs=h.get("outputs"),
                priority=int(h.get("priority", 0)),
                parameters=h.get("params") or {},
                key_id=int(h.get("key", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"malformed request message: {exc}") from exc

    @staticmethod
    def peek_id(fields: dict[bytes, bytes]) -> tuple[str, str] | None:
        """(request id, reply stream) of a message, even one that fails full decoding."""
        try:
            h = orjson.loads(fields[b"h"])
            return str(h["id"]), str(h["reply"])
        except Exception:
            return None


@dataclass(slots=True)
class InferReplyMsg:
    request_id: str
    ok: bool
    outputs: list[TensorMeta] = field(default_factory=list)
    tensors: list[bytes] = field(default_factory=list)
    error_code: str = ""
    error: str = ""
    queue_us: int = 0
    compute_us: int = 0
    batch_size: int = 0
    worker: str = ""
    prompt_tokens: int = 0  # the request's input tokens, where the model tokenises (hf-encoder)

    def to_fields(self) -> dict[bytes, bytes]:
        header: dict[str, Any] = {
            "id": self.request_id,
            "ok": self.ok,
            "q": self.queue_us,
            "c": self.compute_us,
            "b": self.batch_size,
            "w": self.worker,
        }
        if self.prompt_tokens:
            header["t"] = self.prompt_tokens
        if self.ok:
            header["outputs"] = [t.to_json() for t in self.outputs]
        else:
            header["code"] = self.error_code
            header["error"] = self.error
        fields = {b"v": CONTRACT_VERSION, b"h": orjson.dumps(header)}
        for i, buf in enumerate(self.tensors):
            fields[b"o%d" % i] = buf
        return fields

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> InferReplyMsg:
        if fields.get(b"v") != CONTRACT_VERSION:
            raise ContractError(f"unsupported contract version {fields.get(b'v')!r}")
        try:
            h = orjson.loads(fields[b"h"])
            outputs = [TensorMeta.from_json(t) for t in h.get("outputs") or []]
            return cls(
                request_id=str(h["id"]),
                ok=bool(h["ok"]),
                outputs=outputs,
                tensors=[fields[b"o%d" % i] for i in range(len(outputs))],
                error_code=str(h.get("code", "")),
                error=str(h.get("error", "")),
                queue_us=int(h.get("q", 0)),
                compute_us=int(h.get("c", 0)),
                batch_size=int(h.get("b", 0)),
                worker=str(h.get("w", "")),
                prompt_tokens=int(h.get("t", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"malformed reply message: {exc}") from exc

    @classmethod
    def failure(cls, request_id: str, code: str, message: str, worker: str = "") -> InferReplyMsg:
        return cls(request_id=request_id, ok=False, error_code=code, error=message, worker=worker)


CHECK_KINDS = ("upload", "finetune")


@dataclass(slots=True)
class CheckRequestMsg:
    """A model check a gateway asks a worker to run (the gateway cannot import the runtime).
    `upload`: args name the spooled upload (a file name in the blob store's pending area), its
    format, signature and the check's limits; `finetune`: a job's model check, with blobs named
    by digest. The worker resolves every path itself, under its own blob store."""

    check_id: str
    kind: str
    reply_to: str
    deadline_ms: int  # wall-clock epoch milliseconds
    args: dict[str, Any]

    def to_fields(self) -> dict[bytes, bytes]:
        header = {
            "id": self.check_id,
            "kind": self.kind,
            "reply": self.reply_to,
            "deadline": self.deadline_ms,
            "args": self.args,
        }
        return {b"v": CONTRACT_VERSION, b"h": orjson.dumps(header)}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> CheckRequestMsg:
        if fields.get(b"v") != CONTRACT_VERSION:
            raise ContractError(f"unsupported contract version {fields.get(b'v')!r}")
        try:
            h = orjson.loads(fields[b"h"])
            msg = cls(str(h["id"]), str(h["kind"]), str(h["reply"]), int(h["deadline"]), dict(h["args"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"malformed check message: {exc}") from exc
        if msg.kind not in CHECK_KINDS:
            raise ContractError(f"unknown check kind {msg.kind!r}")
        return msg


@dataclass(slots=True)
class CheckReplyMsg:
    """A check's verdict: `ok` with its result (an upload's signature, a job's parameter counts),
    or the reason it was refused."""

    check_id: str
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    worker: str = ""

    def to_fields(self) -> dict[bytes, bytes]:
        header = {"id": self.check_id, "ok": self.ok, "result": self.result, "error": self.error}
        return {b"v": CONTRACT_VERSION, b"h": orjson.dumps(header | {"w": self.worker})}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> CheckReplyMsg:
        if fields.get(b"v") != CONTRACT_VERSION:
            raise ContractError(f"unsupported contract version {fields.get(b'v')!r}")
        try:
            h = orjson.loads(fields[b"h"])
            return cls(str(h["id"]), bool(h["ok"]), dict(h.get("result") or {}), str(h.get("error", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"malformed check reply: {exc}") from exc


class EngineClient(Protocol):
    """The one boundary between the gateway and GPU work (implemented on Redis Streams by
    workers/contract/client.py::StreamsEngineClient).

    Every call that reaches the queue raises `EngineUnavailable` (workers/contract/errors.py)
    when the queue cannot be reached; none raises a Redis or socket error. The gateway maps
    these errors to HTTP in one place (service/errors.py::from_engine)."""

    reply_stream: str
    """The stream this gateway's replies arrive on (InferRequestMsg.reply_to of a sync request)."""

    async def start(self) -> None:
        """Connect and start reading replies. Never raises: an unreachable queue is retried in
        the background, and calls fail with EngineUnavailable until it is back."""
        ...

    async def close(self) -> None:
        """Stop reading replies; every waiter still pending fails with EngineUnavailable."""
        ...

    async def submit(
        self, stream: str, msg: InferRequestMsg, *, bound: tuple[list[str], int] | None = None
    ) -> None:
        """Enqueue `msg` on `stream` and register a waiter for its reply (see `wait`). With
        `bound` = (the version's streams, max_queue_size) the entry is added only while their
        total length is under the bound, checked and added atomically.
        Raises QueueFull (the bound is reached) or EngineUnavailable; no waiter is left then."""
        ...

    async def wait(self, request_id: str, timeout_s: float) -> InferReplyMsg:
        """The reply to a submitted request. Raises ReplyTimeout when none comes in `timeout_s`,
        EngineUnavailable when the queue connection is lost meanwhile, KeyError for a request
        not submitted here (or already waited for)."""
        ...

    async def cancel(self, request_id: str) -> None:
        """Forget the waiter of a submitted request (the reply, if one comes, is dropped).
        Never raises."""
        ...

    async def health(self) -> dict[str, Any]:
        """{"redis": reachable, "workers": ready workers, "workers_not_ready": live, not ready}.
        Never raises: an unreachable queue reads as {"redis": False, "workers": 0, ...}."""
        ...

    async def worker_infos(self) -> list[dict[str, Any]]:
        """The heartbeat of each live worker: "ready", "loaded" (version ids), "failed"
        (version id -> load error); with a generation loop beside it, "generation" (the version
        ids it hosts) and "generation_alive". Raises EngineUnavailable."""
        ...

    async def submit_async(
        self,
        stream: str,
        msg: InferRequestMsg,
        record: bytes,
        ttl_s: int,
        *,
        bound: tuple[list[str], int] | None = None,
    ) -> None:
        """Enqueue an asynchronous request: its result stream (msg.reply_to, from
        RedisKeys.async_result) first gets `record` and expires after `ttl_s`; the worker
        appends its reply there. Nobody waits. Raises QueueFull (as `submit`) or
        EngineUnavailable; the result stream is removed again then."""
        ...

    async def async_result(self, request_id: str) -> tuple[bytes, dict[bytes, bytes] | None] | None:
        """(the record, the reply's raw fields, None while pending) of an asynchronous request;
        None when there is no such request (never submitted, or expired).
        Raises EngineUnavailable."""
        ...

    async def lifecycle_commands(self) -> dict[int, str]:
        """Version id -> its latest lifecycle command ("load:<nonce>" or "unload:<nonce>").
        Raises EngineUnavailable."""
        ...

    async def command_lifecycle(self, version_ids: list[int], action: str) -> None:
        """Leave `action` ("load" or "unload", with a fresh nonce) for every worker, for each
        version (workers/inference/lifecycle.py acts on it). Raises EngineUnavailable."""
        ...

    async def usage_days(self, tenant_id: int, days: list[str]) -> list[dict[bytes, bytes]]:
        """The usage hash the workers wrote for the tenant on each day (YYYYMMDD), in order,
        empty for a day without usage (fields: workers/contract/usage.py). Raises EngineUnavailable."""
        ...

    async def dispatch_finetune(self, job_id: str) -> None:
        """Tell the trainers a fine-tune job is queued (the database holds the job).
        Raises EngineUnavailable."""
        ...

    async def submit_gen(self, stream: str, msg: GenRequestMsg) -> None:
        """Enqueue a generation request (workers/contract/generation.py) on `stream`
        (RedisKeys.gen_stream) and open its chunk queue. Raises EngineUnavailable."""
        ...

    def gen_chunks(self, request_id: str, timeout_s: float) -> AsyncIterator[GenChunkMsg]:
        """The chunks of a submitted generation, in `seq` order, ending with its `done` chunk.
        Raises ReplyTimeout past `timeout_s` from now, EngineUnavailable when the queue
        connection is lost meanwhile, KeyError for a request not submitted here."""
        ...

    async def finish_gen(self, request_id: str, *, cancel: bool = False) -> None:
        """Forget a generation's chunk queue (always call it); with `cancel` (the client went
        away) set its cancel key so the worker frees the sequence. Never raises."""
        ...
