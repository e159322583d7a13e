"""Generation children that break the protocol (run inside a fenced child by
tests/integration/test_generation_fenced.py, imported there by name)."""

from __future__ import annotations

from typing import Any

from model_store.channel import Channel


def lies(ch: Channel, args: dict[str, Any]) -> None:
    """Loads, accepts a request, then sends an event the worker must not believe."""
    ch.send({"loaded": True, "device": "cpu", "context_length": 64})
    header, _ = ch.recv()
    rid = header.get("id")
    ch.send({"submitted": rid})
    ch.send({"events": [{"id": rid, "i": 0, "t": "x" * 10, "n": -5, "finish": "pwned"}], "stats": {}})
    while True:
        ch.recv()


def silent(ch: Channel, args: dict[str, Any]) -> None:
    """Loads, then never answers a submission."""
    ch.send({"loaded": True, "device": "cpu", "context_length": 64})
    while True:
        ch.recv()
