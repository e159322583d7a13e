"""The running requests of the generation loop without Redis: a client cancel or a deadline
cancels the sequence; a backend that never ends a cancelled request is overruled after the grace;
a deadline-cancelled request ends in a deadline_exceeded error with its usage charged; a failed
backend ends its version's requests with model_error."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from workers.common.streams import Entry
from workers.contract.generation import GenParams, GenRequestMsg, GenUsage
from workers.generation.backend import GenEvent
from workers.generation.chunks import ChunkBuffer, Running
from workers.generation.config import GenConfig
from workers.generation.metrics import GenMetrics
from workers.generation.sessions import Sessions


@dataclass
class _Backend:
    cancelled: list[str] = field(default_factory=list)

    def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)


@dataclass
class _Hosted:
    backend: _Backend
    running: set[str] = field(default_factory=set)


@dataclass
class _Backends:
    hosted: dict[int, _Hosted]


def _sessions(*rids: str, deadline: float = 100.0) -> tuple[Sessions, _Backend, CollectorRegistry]:
    backend = _Backend()
    reg = CollectorRegistry()
    s = Sessions(_Backends({1: _Hosted(backend, set(rids))}), GenMetrics(reg), GenConfig())  # type: ignore[arg-type]
    for rid in rids:
        msg = GenRequestMsg(rid, "k:reply:g", 0, 0, 3, "chat", "completion", True, GenParams(), prompt="x")
        entry = Entry("k:gen:1", rid.encode(), {})
        s.add(Running(entry, msg, 1, "chat", 1, 0.0, deadline, ChunkBuffer(rid)))
    return s, backend, reg


def test_client_cancel_reaches_the_backend_once() -> None:
    s, backend, _ = _sessions("a", "b")
    s.cancel({"a"}, 1.0)
    s.cancel({"a"}, 1.05)
    assert backend.cancelled == ["a"] and s.ids() == ["b"]
    s.events([GenEvent("a", finish="cancelled", done=True, usage=GenUsage(1, 0))], 1.1)
    (out,) = s.due(1.1)
    assert out.entry is not None and out.chunks[-1].finish == "cancelled"
    assert out.charge is not None and out.charge.prompt_tokens == 1  # prompt work is charged
    assert list(s.running) == ["b"]


def test_a_backend_that_never_ends_a_cancel_is_overruled_after_the_grace() -> None:
    s, _backend, _ = _sessions("a")
    s.cancel({"a"}, 1.0)
    s.overdue(1.5)
    assert s.due(1.5) == []
    s.overdue(2.0)
    (out,) = s.due(2.0)
    assert out.entry is not None and out.chunks[-1].finish == "cancelled" and out.charge is None


def test_deadline_cancel_ends_in_a_deadline_error_with_usage_charged() -> None:
    s, backend, reg = _sessions("a", deadline=5.0)
    s.events([GenEvent("a", text="hi ", tokens=1, first_token=True)], 4.0)
    s.due(4.0)
    s.cancel(set(), 5.0)
    assert backend.cancelled == ["a"]
    s.events([GenEvent("a", finish="cancelled", done=True, usage=GenUsage(2, 1))], 5.1)
    (out,) = s.due(5.1)
    last = out.chunks[-1]
    assert (last.finish, last.code, last.seq) == ("error", "deadline_exceeded", 1)
    assert out.charge is not None and (out.charge.prompt_tokens, out.charge.completion_tokens) == (2, 1)
    assert reg.get_sample_value("kiln_gen_generation_tokens_total", {"model": "chat", "version": "1"}) == 1
    labels = {"model": "chat", "version": "1", "code": "deadline_exceeded"}
    assert reg.get_sample_value("kiln_gen_request_failure_total", labels) == 1


def test_a_failed_backend_ends_its_requests_with_model_error() -> None:
    s, _backend, _ = _sessions("a", "b")
    s.events([GenEvent("a", text="x", tokens=1, first_token=True)], 0.0)
    s.fail_version(1, "model_error", "the model failed")
    outs = s.due(0.0)
    assert {o.request_id for o in outs} == {"a", "b"} and all(o.entry is not None for o in outs)
    assert all(o.chunks[-1].code == "model_error" for o in outs) and not s.running
    assert [c.seq for c in next(o for o in outs if o.request_id == "a").chunks] == [0, 1]
