"""The fenced generation child's stats frame (workers/generation/wire.py): adapter counts pass
through; a child that lies about them is a protocol error (the worker kills it)."""

from __future__ import annotations

import pytest

from workers.generation.backend import GenStats
from workers.generation.wire import WireError, stats_from_json, stats_to_json


def test_adapter_counts_round_trip_and_plain_stats_stay_plain() -> None:
    s = GenStats(running=2, waiting=1, kv_cache_usage=0.5, extra={"adapters": 3, "adapter_loads": 5})
    back = stats_from_json(stats_to_json(s))
    assert back.extra == {"adapters": 3, "adapter_loads": 5} and back.running == 2
    assert "extra" not in stats_to_json(GenStats(running=1))
    assert stats_from_json(stats_to_json(GenStats(running=1))).extra == {}


@pytest.mark.parametrize("extra", [[1], {"adapters": -1}, {"adapter_loads": "many"}, {"adapters": True}])
def test_lying_adapter_counts_are_refused(extra: object) -> None:
    with pytest.raises(WireError):
        stats_from_json({"running": 0, "waiting": 0, "kv": 0.0, "extra": extra})


def test_unknown_extra_keys_are_dropped() -> None:
    got = stats_from_json({"running": 0, "waiting": 0, "kv": 0.0, "extra": {"pwned": 1, "adapters": 1}})
    assert got.extra == {"adapters": 1}
