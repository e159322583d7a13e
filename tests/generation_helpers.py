"""Driving a GenerationBackend in tests: requests, and their events collected per choice."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from workers.contract.generation import GenParams, GenRequestMsg, GenUsage
from workers.generation.backend import GenerationBackend, GenEvent

_ids = itertools.count()
MAX_POLLS = 100_000  # a bound on loops that wait for events (never a timed assert)


def chat(content: str, **params: Any) -> GenRequestMsg:
    return GenRequestMsg(
        f"req-{next(_ids)}", "reply", 0, 0, 1, "m", "chat", True, GenParams(**params),
        messages=[{"role": "user", "content": content}],
    )  # fmt: skip


def completion(prompt: str, **params: Any) -> GenRequestMsg:
    return GenRequestMsg(
        f"req-{next(_ids)}", "reply", 0, 0, 1, "m", "completion", True, GenParams(**params), prompt=prompt
    )


@dataclass
class Result:
    texts: dict[int, str] = field(default_factory=dict)
    finish: dict[int, str | None] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    events: list[GenEvent] = field(default_factory=list)
    usage: GenUsage | None = None
    done: bool = False

    def add(self, e: GenEvent) -> None:
        assert not self.done, "an event after the request's last"
        self.events.append(e)
        self.texts[e.index] = self.texts.get(e.index, "") + e.text
        self.tokens[e.index] = self.tokens.get(e.index, 0) + e.tokens
        if e.finish:
            assert e.index not in self.finish, "two finishing events for one choice"
            self.finish[e.index] = e.finish
        if e.done:
            self.done, self.usage = True, e.usage

    @property
    def text(self) -> str:
        return self.texts.get(0, "")


def drain(backend: GenerationBackend, reqs: list[GenRequestMsg]) -> list[Result]:
    """Submit every request, then poll until each is done."""
    results = {r.request_id: Result() for r in reqs}
    for r in reqs:
        backend.submit(r)
    for _ in range(MAX_POLLS):
        if all(res.done for res in results.values()):
            break
        for e in backend.poll(0.5):
            results[e.request_id].add(e)
    return [results[r.request_id] for r in reqs]
