"""StreamsEngineClient's waiters when the reply reader loses Redis (no Redis needed: the loss is
driven by hand at the moment the race puts it)."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from workers.contract.client import StreamsEngineClient
from workers.contract.errors import EngineUnavailable
from workers.contract.messages import InferReplyMsg, InferRequestMsg
from workers.contract.redis_keys import RedisKeys


def _client() -> StreamsEngineClient:
    client = StreamsEngineClient("redis://127.0.0.1:1/0", RedisKeys("unit"))  # never connected
    client.connected = True
    return client


def _msg(client: StreamsEngineClient, rid: str) -> InferRequestMsg:
    return InferRequestMsg(rid, client.reply_stream, 0, 0, 1, [], [])


async def test_a_loss_between_enqueue_and_wait_is_unavailable_not_a_key_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The enqueue went through, then the reader lost Redis before the request reached `wait`
    (a loaded event loop resumes it late): `wait` raises EngineUnavailable (503), not KeyError
    (500, 'internal error')."""
    client = _client()

    async def enqueued_then_lost(*_args: object) -> None:
        await client._lost(RedisConnectionError("Connection closed by server."))

    monkeypatch.setattr(client, "_enqueue", enqueued_then_lost)
    await client.submit("s", _msg(client, "r1"))
    with pytest.raises(EngineUnavailable):
        await client.wait("r1", 5)
    assert not client._pending  # taken out by its request, not left behind
    assert not client.connected


async def test_waiters_fail_on_a_loss_and_a_later_reply_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client()

    async def enqueued(*_args: object) -> None:
        return None

    monkeypatch.setattr(client, "_enqueue", enqueued)
    await client.submit("s", _msg(client, "a"))
    await client.submit("s", _msg(client, "b"))
    waiting = asyncio.create_task(client.wait("a", 5))
    await asyncio.sleep(0)
    client._fail_all("queue connection lost")
    client._resolve(InferReplyMsg("b", ok=True).to_fields())  # too late: b already failed
    with pytest.raises(EngineUnavailable):
        await waiting
    with pytest.raises(EngineUnavailable):
        await client.wait("b", 5)
    assert not client._pending
    with pytest.raises(KeyError):  # waited for already
        await client.wait("b", 5)


async def test_a_failed_enqueue_after_a_loss_takes_its_waiter_out(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client()

    async def lost_then_failed(*_args: object) -> None:
        client._fail_all("queue connection lost")
        raise EngineUnavailable("queue is unavailable")

    monkeypatch.setattr(client, "_enqueue", lost_then_failed)
    with pytest.raises(EngineUnavailable):
        await client.submit("s", _msg(client, "r"))
    assert not client._pending
