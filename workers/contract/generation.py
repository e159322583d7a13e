"""The wire contract for text generation (OpenAI chat and completions) between gateways and
workers: one request entry on the version's generation stream, token chunks back on the asking
gateway's reply stream (the same stream that carries tensor replies; `k` tells them apart).

Request entry (RedisKeys.gen_stream(version_id), consumer group GROUP):
    v = CONTRACT_VERSION, k = b"gen", h = JSON header (GenRequestMsg)
Chunk entry (RedisKeys.reply_stream(gateway_id)):
    v = CONTRACT_VERSION, k = b"gen", h = JSON header (GenChunkMsg)

A request's chunks carry `seq` 0, 1, 2, ... in order; the last has `finish` set (and `usage`).
A chunk with finish == "error" ends the request with `code` and `error` (a message fit for a
client). Cancelling: the gateway sets RedisKeys.gen_cancel(request_id) (with a TTL); a worker
that sees it frees the sequence and sends a last chunk with finish == "cancelled".

Chat templating and tokenisation are the worker's: the gateway never loads a tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from workers.contract.wire import CONTRACT_VERSION, ContractError

KIND = b"gen"
Mode = Literal["chat", "completion"]
FINISH_REASONS = ("stop", "length", "cancelled", "error")
MAX_STOP = 4  # OpenAI's limit on `stop` sequences
MAX_N = 8


class GenErrorCode:
    """Why a generation ended in error; the gateway maps each to an HTTP status / error type."""

    INVALID_INPUT = "invalid_input"  # e.g. the prompt is longer than the context (400)
    CONTEXT_LENGTH = "context_length_exceeded"  # 400, OpenAI's code
    DEADLINE_EXCEEDED = "deadline_exceeded"  # 504
    MODEL_ERROR = "model_error"  # 500
    LOAD_FAILED = "load_failed"  # 503
    WORKER_LOST = "worker_lost"  # the worker died mid-stream (502 / an error event)
    UNAVAILABLE = "unavailable"  # 503


@dataclass(slots=True)
class GenParams:
    """Sampling parameters of one request, as OpenAI names them (checked by the gateway, and
    again by the worker: the stream is not trusted either)."""

    max_tokens: int | None = None  # None: up to the context length (capped by the worker)
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    logprobs: int | None = None  # None: off; k >= 0: the chosen token's logprob (+ top k)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": list(self.stop),
            "n": self.n,
            "logprobs": self.logprobs,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GenParams:
        p = cls(
            max_tokens=None if d.get("max_tokens") is None else int(d["max_tokens"]),
            temperature=float(d.get("temperature", 1.0)),
            top_p=float(d.get("top_p", 1.0)),
            top_k=int(d.get("top_k", 0)),
            seed=None if d.get("seed") is None else int(d["seed"]),
            stop=[str(s) for s in d.get("stop") or []],
            n=int(d.get("n", 1)),
            logprobs=None if d.get("logprobs") is None else int(d["logprobs"]),
        )
        p.check()
        return p

    def check(self) -> None:
        """Raise ValueError with a client-fit message when a parameter is out of range."""
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be 0 (off) or positive")
        if len(self.stop) > MAX_STOP or any(not s or len(s) > 256 for s in self.stop):
            raise ValueError(f"stop takes at most {MAX_STOP} non-empty strings of at most 256 characters")
        if not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be between 1 and {MAX_N}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError("logprobs must be between 0 and 20")


@dataclass(frozen=True, slots=True)
class AdapterRef:
    version_id: int
    sha256: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AdapterRef:
        sha = str(d["sha256"])
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError("adapter sha256 must be 64 lowercase hex digits")
        return cls(int(d["id"]), sha)


@dataclass(slots=True)
class GenRequestMsg:
    request_id: str
    reply_to: str  # the asking gateway's reply stream
    deadline_ms: int  # wall-clock epoch milliseconds
    enqueued_ms: int
    tenant_id: int
    model: str  # the name the client asked for, echoed in responses
    mode: Mode
    stream: bool
    params: GenParams
    messages: list[dict[str, str]] | None = None  # mode "chat": [{"role", "content"}, ...]
    prompt: str | None = None  # mode "completion"
    key_id: int = 0
    # a lora-adapter version served on this stream's base: its version id and blob digest (the
    # worker loads it from the blob store, checked against the digest); None: the base alone
    adapter: AdapterRef | None = None

    def to_fields(self) -> dict[bytes, bytes]:
        header: dict[str, Any] = {
            "id": self.request_id,
            "reply": self.reply_to,
            "deadline": self.deadline_ms,
            "enq": self.enqueued_ms,
            "tenant": self.tenant_id,
            "key": self.key_id,
            "model": self.model,
            "mode": self.mode,
            "stream": self.stream,
            "params": self.params.to_json(),
        }
        if self.adapter is not None:
            header["adapter"] = {"id": self.adapter.version_id, "sha256": self.adapter.sha256}
        if self.mode == "chat":
            header["messages"] = self.messages or []
        else:
            header["prompt"] = self.prompt or ""
        return {b"v": CONTRACT_VERSION, b"k": KIND, b"h": orjson.dumps(header)}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> GenRequestMsg:
        if fields.get(b"v") != CONTRACT_VERSION or fields.get(b"k") != KIND:
            raise ContractError("not a generation request of this contract version")
        try:
            h = orjson.loads(fields[b"h"])
            mode = h["mode"]
            if mode not in ("chat", "completion"):
                raise ValueError(f"unknown mode {mode!r}")
            messages = None
            if mode == "chat":
                messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in h["messages"]]
            return cls(
                request_id=str(h["id"]),
                reply_to=str(h["reply"]),
                deadline_ms=int(h["deadline"]),
                enqueued_ms=int(h["enq"]),
                tenant_id=int(h["tenant"]),
                key_id=int(h.get("key", 0)),
                model=str(h["model"]),
                mode=mode,
                stream=bool(h["stream"]),
                params=GenParams.from_json(h.get("params") or {}),
                messages=messages,
                prompt=None if mode == "chat" else str(h["prompt"]),
                adapter=AdapterRef.from_json(h["adapter"]) if h.get("adapter") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"malformed generation request: {exc}") from exc


@dataclass(slots=True)
class GenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GenUsage:
        return cls(int(d.get("prompt_tokens", 0)), int(d.get("completion_tokens", 0)))


@dataclass(slots=True)
class GenChunkMsg:
    """Part of one request's output: `text` is the new text of choice `index` since the last
    chunk. The last chunk of a choice has `finish`; the last chunk of the request has `usage`
    (summed over its choices) and `done`."""

    request_id: str
    seq: int
    index: int = 0  # the choice (n > 1)
    text: str = ""
    tokens: int = 0  # tokens this chunk adds
    finish: str | None = None  # one of FINISH_REASONS, on a choice's last chunk
    done: bool = False  # the request's last chunk
    usage: GenUsage | None = None
    logprobs: list[dict[str, Any]] | None = None  # [{"token", "logprob", "top_logprobs"?}]
    code: str = ""  # GenErrorCode, with finish == "error"
    error: str = ""
    worker: str = ""

    def to_fields(self) -> dict[bytes, bytes]:
        header: dict[str, Any] = {"id": self.request_id, "seq": self.seq, "i": self.index, "t": self.text}
        if self.tokens:
            header["n"] = self.tokens
        if self.finish is not None:
            header["finish"] = self.finish
        if self.done:
            header["done"] = True
        if self.usage is not None:
            header["usage"] = self.usage.to_json()
        if self.logprobs is not None:
            header["lp"] = self.logprobs
        if self.code or self.error:
            header["code"], header["error"] = self.code, self.error
        if self.worker:
            header["w"] = self.worker
        return {b"v": CONTRACT_VERSION, b"k": KIND, b"h": orjson.dumps(header)}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> GenChunkMsg:
        if fields.get(b"v") != CONTRACT_VERSION or fields.get(b"k") != KIND:
            raise ContractError("not a generation chunk of this contract version")
        try:
            h = orjson.loads(fields[b"h"])
            finish = h.get("finish")
            if finish is not None and finish not in FINISH_REASONS:
                raise ValueError(f"unknown finish reason {finish!r}")
            return cls(
                request_id=str(h["id"]),
                seq=int(h["seq"]),
                index=int(h.get("i", 0)),
                text=str(h.get("t", "")),
                tokens=int(h.get("n", 0)),
                finish=finish,
                done=bool(h.get("done", False)),
                usage=GenUsage.from_json(h["usage"]) if "usage" in h else None,
                logprobs=h.get("lp"),
                code=str(h.get("code", "")),
                error=str(h.get("error", "")),
                worker=str(h.get("w", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"malformed generation chunk: {exc}") from exc

    @classmethod
    def failure(cls, request_id: str, seq: int, code: str, message: str, worker: str = "") -> GenChunkMsg:
        return cls(request_id, seq, finish="error", done=True, code=code, error=message, worker=worker)


def is_gen(fields: dict[bytes, bytes]) -> bool:
    """Whether a stream entry (request or reply) belongs to this contract."""
    return fields.get(b"k") == KIND
