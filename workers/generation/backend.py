"""What the worker's generation loop (workers/generation/loop.py) needs of a loaded
hf-causal-lm version: a backend that takes requests, streams their tokens back as events and
frees a sequence on cancel. The real one runs the model in a fenced child (host.py); the loop
never sees torch.

Thread model: `submit`, `cancel`, `poll` and `stats` are called from one thread (the loop's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from workers.contract.generation import AdapterRef, GenRequestMsg, GenUsage

AdapterBytes = Callable[[AdapterRef], bytes]  # a LoRA adapter bundle's bytes, checked against its digest


class GenInputError(ValueError):
    """A request the model cannot take (prompt over the context length, a chat the template
    refuses...); the message is fit for a client. `code` is a GenErrorCode."""

    def __init__(self, message: str, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.code = code


class NeedAdapter(Exception):
    """The engine does not hold the request's adapter and was given no way to read it."""


@dataclass(slots=True)
class GenEvent:
    """New output of one request's choice since its last event (text already detokenised,
    stop sequences already applied). `finish` on the choice's last event; `usage` (the whole
    request's) and `done` on the request's last event."""

    request_id: str
    index: int = 0
    text: str = ""
    tokens: int = 0
    finish: str | None = None
    done: bool = False
    usage: GenUsage | None = None
    logprobs: list[dict[str, Any]] | None = None
    code: str = ""  # with finish == "error"
    error: str = ""
    first_token: bool = False  # this event carries the request's first generated token (TTFT)


@dataclass(slots=True)
class GenStats:
    running: int = 0  # sequences in the running batch
    waiting: int = 0  # admitted, not yet scheduled
    kv_cache_usage: float = 0.0  # 0..1 of the paged cache's blocks in use
    extra: dict[str, Any] = field(default_factory=dict)


class GenerationBackend(Protocol):
    @property
    def context_length(self) -> int: ...

    def submit(self, req: GenRequestMsg, adapters: AdapterBytes | None = None) -> None:
        """Start generating (tokenise, apply the chat template, check the context length).
        Raises GenInputError for a request the model cannot take; the request then has no events.
        A request with a LoRA adapter (`req.adapter`) is given `adapters` to read its bytes."""

    def cancel(self, request_id: str) -> None:
        """Free the request's sequences now; its last event has finish == "cancelled"."""

    def poll(self, timeout_s: float) -> list[GenEvent]:
        """Events produced since the last poll, waiting up to timeout_s for the first one."""

    def stats(self) -> GenStats: ...

    def close(self) -> None: ...
