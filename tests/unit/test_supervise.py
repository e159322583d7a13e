"""Embedded mode's supervisor: restart delays double per quick failure, capped; readiness reasons."""

from __future__ import annotations

import subprocess
import sys

from service.cli.supervise import Supervisor, backoff
from service.readiness import not_ready_reasons


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n, 0.5, 4.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_dead_child_is_restarted_after_its_delay() -> None:
    sup = Supervisor(base_s=1.0, cap_s=8.0)
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        spawned.append(subprocess.Popen([sys.executable, "-c", "pass"]))
        return spawned[-1]

    child = sup.add("worker 1", spawn)
    spawned[0].wait(10)
    sup.check(child, 100.0)  # exited: a restart is scheduled, not done
    assert child.restart_at == 101.0 and len(spawned) == 1
    sup.check(child, 100.5)
    assert len(spawned) == 1
    sup.check(child, 101.0)
    assert len(spawned) == 2 and child.restarts == 1
    spawned[1].wait(10)
    sup.check(child, child.started + 1)  # a quick second failure: twice the delay
    assert child.restart_at == child.started + 1 + 2.0
    sup.stop()


def test_readiness_needs_a_live_worker() -> None:
    assert not_ready_reasons({"redis": True, "workers": 1}, True, 1) == []
    (why,) = not_ready_reasons({"redis": True, "workers": 0, "workers_not_ready": 1}, True, 1)
    assert "0 live, ready workers" in why and "1 alive but not ready" in why
    assert not_ready_reasons({"redis": True, "workers": 0}, True, 0) == []
    assert len(not_ready_reasons({"redis": False, "workers": 0}, False, 1)) == 2
