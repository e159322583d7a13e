"""OpenAI's response objects built from generation chunks (workers/contract/generation.py):
chat.completion / chat.completion.chunk, text_completion (whole and streamed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.contract.generation import GenChunkMsg, GenUsage

FINISH = {"stop": "stop", "length": "length"}


@dataclass(frozen=True, slots=True)
class Shape:
    """What every object of one response shares."""

    chat: bool
    id: str
    created: int
    model: str  # as the client asked for it

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"


def usage_json(usage: GenUsage | None) -> dict[str, int]:
    u = usage or GenUsage()
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def _top(entry: dict[str, Any]) -> list[dict[str, Any]]:
    top = entry.get("top_logprobs") or []
    if isinstance(top, dict):
        top = [{"token": t, "logprob": lp} for t, lp in top.items()]
    return [
        {"token": str(t.get("token", "")), "logprob": float(t.get("logprob", 0.0)), "bytes": None}
        for t in top
        if isinstance(t, dict)
    ]


def chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if entries is None:
        return None
    content = [
        {
            "token": str(e.get("token", "")),
            "logprob": float(e.get("logprob", 0.0)),
            "bytes": None,
            "top_logprobs": _top(e),
        }
        for e in entries
        if isinstance(e, dict)
    ]
    return {"content": content}


def text_logprobs(entries: list[dict[str, Any]] | None, offset: int = 0) -> dict[str, Any] | None:
    if entries is None:
        return None
    tokens = [str(e.get("token", "")) for e in entries if isinstance(e, dict)]
    offsets = []
    for tok in tokens:
        offsets.append(offset)
        offset += len(tok)
    return {
        "tokens": tokens,
        "token_logprobs": [float(e.get("logprob", 0.0)) for e in entries if isinstance(e, dict)],
        "top_logprobs": [{t["token"]: t["logprob"] for t in _top(e)} for e in entries if isinstance(e, dict)],
        "text_offset": offsets,
    }


@dataclass(slots=True)
class Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None
    finish: str | None = None

    def add(self, chunk: GenChunkMsg) -> None:
        self.text.append(chunk.text)
        if chunk.logprobs is not None:
            self.logprobs = (self.logprobs or []) + chunk.logprobs
        if chunk.finish is not None:
            self.finish = chunk.finish


def whole(shape: Shape, choices: dict[int, Choice], usage: GenUsage | None) -> dict[str, Any]:
    """The non-streamed response, once every chunk is in."""
    out = []
    for index in sorted(choices):
        c = choices[index]
        text = "".join(c.text)
        finish = FINISH.get(c.finish or "stop", "stop")
        if shape.chat:
            out.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": chat_logprobs(c.logprobs),
                    "finish_reason": finish,
                }
            )
        else:
            out.append(
                {"index": index, "text": text, "logprobs": text_logprobs(c.logprobs), "finish_reason": finish}
            )
    return {
        "id": shape.id,
        "object": shape.object,
        "created": shape.created,
        "model": shape.model,
        "choices": out,
        "usage": usage_json(usage),
    }


def chunk_event(
    shape: Shape, chunk: GenChunkMsg, first: bool, offset: int, include_usage: bool
) -> dict[str, Any]:
    """One streamed object for one chunk (`first`: the choice's first, which names the role)."""
    finish = FINISH.get(chunk.finish) if chunk.finish else None
    choice: dict[str, Any] = {"index": chunk.index}
    if shape.chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if chunk.text or first:
            delta["content"] = chunk.text
        choice["delta"] = delta
        choice["logprobs"] = chat_logprobs(chunk.logprobs)
    else:
        choice["text"] = chunk.text
        choice["logprobs"] = text_logprobs(chunk.logprobs, offset)
    choice["finish_reason"] = finish
    event: dict[str, Any] = {
        "id": shape.id,
        "object": shape.chunk_object,
        "created": shape.created,
        "model": shape.model,
        "choices": [choice],
    }
    if include_usage:
        event["usage"] = None
    return event


def usage_event(shape: Shape, usage: GenUsage | None) -> dict[str, Any]:
    """The last object of a stream with stream_options.include_usage: no choices, the usage."""
    return {
        "id": shape.id,
        "object": shape.chunk_object,
        "created": shape.created,
        "model": shape.model,
        "choices": [],
        "usage": usage_json(usage),
    }
