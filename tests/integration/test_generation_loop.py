"""The generation loop against the real Redis and PostgreSQL, with the deterministic test
backend (tests/generation_backend.py): chunks in seq order with the first token alone, the ack
only after the last chunk, usage charged with it; cancel, deadlines, input errors, malformed and
hostile entries, load failures, max_running, and entries taken over from a dead consumer."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest
import redis

import tests.conftest as base
from model_store.registry import Registry
from tests.generation_backend import StepBackend, expected_text, load, load_failing, register_gen_version
from tests.integration.gen_helpers import GATEWAY, Replies, add_raw, enqueue, running_loop, text
from workers.contract.redis_keys import GROUP, RedisKeys
from workers.contract.usage import day_of
from workers.generation.config import GenConfig


@pytest.fixture
def keys(redis_prefix: str) -> RedisKeys:
    return RedisKeys(redis_prefix)


@pytest.fixture
def version_id(registry: Registry, tmp_path: Path) -> int:
    return register_gen_version(registry, tmp_path)


def _queue_empty(r: redis.Redis, keys: RedisKeys, vid: int) -> bool:
    stream = keys.gen_stream(vid)
    return r.xlen(stream) == 0 and r.xpending(stream, GROUP)["pending"] == 0


def test_stream_chunks_in_order_first_token_alone_acked_and_charged(
    redis_client, keys, registry, version_id, redis_prefix
) -> None:
    with running_loop(base.REDIS_URL, redis_prefix, registry, load):
        replies = Replies(redis_client, keys)
        rid = enqueue(redis_client, keys, version_id, max_tokens=9, prompt="three word prompt")
        chunks = replies.until(rid)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert chunks[0].tokens == 1 and chunks[0].text == "tok0 "  # the first token goes out at once
    assert text(chunks) == expected_text(9) and sum(c.tokens for c in chunks) == 9
    last = chunks[-1]
    assert last.done and last.finish == "length" and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 9)
    assert all(not c.done for c in chunks[:-1])
    assert _queue_empty(redis_client, keys, version_id)
    day = redis_client.hgetall(keys.usage_day(1, day_of(time.time())))
    assert day[b"chat|1|7|p"] == b"3" and day[b"chat|1|7|g"] == b"9" and day[b"chat|1|7|r"] == b"1"
    assert not redis_client.exists(keys.gen_progress(rid))


def test_non_streaming_request_gets_its_text_at_the_end(
    redis_client, keys, registry, version_id, redis_prefix
):
    with running_loop(base.REDIS_URL, redis_prefix, registry, load):
        replies = Replies(redis_client, keys)
        rid = enqueue(redis_client, keys, version_id, stream=False, max_tokens=12)
        chunks = replies.until(rid)
    assert len(chunks) == 1 and chunks[0].done and text(chunks) == expected_text(12)
    assert _queue_empty(redis_client, keys, version_id)


def _gauge(reg, name: str) -> float:
    return sum(s.value for m in reg.collect() for s in m.samples if s.name == name)


def test_client_cancel_frees_the_sequence_and_ends_with_cancelled(
    redis_client, keys, registry, version_id, redis_prefix, monkeypatch
) -> None:
    monkeypatch.setenv("KILN_TEST_GEN_STEP_MS", "20")
    monkeypatch.setenv("KILN_TEST_GEN_CONTEXT", "2000")  # 20 s a request: ends only by the cancel
    with running_loop(base.REDIS_URL, redis_prefix, registry, load) as (_loop, reg):
        replies = Replies(redis_client, keys)
        rid = enqueue(redis_client, keys, version_id, max_tokens=1000)
        replies.until(rid, n=2)
        deadline = time.monotonic() + 10
        while _gauge(reg, "kiln_gen_num_requests_running") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _gauge(reg, "kiln_gen_num_requests_running") == 1
        redis_client.set(keys.gen_cancel(rid), b"1", ex=60)
        chunks = replies.until(rid)
        while _gauge(reg, "kiln_gen_num_requests_running") > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _gauge(reg, "kiln_gen_num_requests_running") == 0
    assert chunks[-1].finish == "cancelled" and chunks[-1].done
    assert 0 < chunks[-1].usage.completion_tokens < 1000  # type: ignore[union-attr]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert _queue_empty(redis_client, keys, version_id)


def test_deadline_passed_in_queue_is_answered_without_running(
    redis_client, keys, registry, version_id, redis_prefix
) -> None:
    with running_loop(base.REDIS_URL, redis_prefix, registry, load) as (loop, _reg):
        replies = Replies(redis_client, keys)
        rid = enqueue(redis_client, keys, version_id, deadline_s=-1)
        (chunk,) = replies.until(rid)
        assert not loop.backends.hosted  # nothing loaded for it
    assert chunk.finish == "error" and chunk.code == "deadline_exceeded" and chunk.seq == 0
    assert _queue_empty(redis_client, keys, version_id)


def test_deadline_while_generating_cancels_with_an_error_chunk(
    redis_client, keys, registry, version_id, redis_prefix, monkeypatch
) -> None:
    monkeypatch.setenv("KILN_TEST_GEN_STEP_MS", "50")
    monkeypatch.setenv("KILN_TEST_GEN_CONTEXT", "2000")
    with running_loop(base.REDIS_URL, redis_prefix, registry, load):
        replies = Replies(redis_client, keys)
        replies.until(enqueue(redis_client, keys, version_id, max_tokens=1))  # loaded: no wait below
        rid = enqueue(redis_client, keys, version_id, max_tokens=1000, deadline_s=2.0)
        chunks = replies.until(rid)
    last = chunks[-1]
    assert last.finish == "error" and last.code == "deadline_exceeded" and last.done
    assert last.usage is not None and last.usage.completion_tokens > 0
    assert _queue_empty(redis_client, keys, version_id)


def test_input_error_gets_its_code(redis_client, keys, registry, version_id, redis_prefix) -> None:
    with running_loop(base.REDIS_URL, redis_prefix, registry, load):
        replies = Replies(redis_client, keys)
        rid = enqueue(redis_client, keys, version_id, prompt="word " * 100)
        (chunk,) = replies.until(rid)
        bug = enqueue(redis_client, keys, version_id, prompt="RAISE")
        (bug_chunk,) = replies.until(bug)
        ok = enqueue(redis_client, keys, version_id, max_tokens=3)
        assert text(replies.until(ok)) == expected_text(3)
    assert chunk.code == "context_length_exceeded" and "context" in chunk.error and chunk.done
    assert bug_chunk.code == "model_error" and "bug" not in bug_chunk.error
    assert _queue_empty(redis_client, keys, version_id)


def test_malformed_and_hostile_entries_never_stop_the_loop(
    redis_client, keys, registry, version_id, redis_prefix
) -> None:
    reply = keys.reply_stream(GATEWAY)
    with running_loop(base.REDIS_URL, redis_prefix, registry, load):
        replies = Replies(redis_client, keys)
        header = {"id": "bad1", "reply": reply, "mode": "nonsense"}
        add_raw(redis_client, keys, version_id, {b"v": b"1", b"k": b"gen", b"h": orjson.dumps(header)})
        add_raw(redis_client, keys, version_id, {b"v": b"1", b"k": b"gen", b"h": b"\xff not json"})
        elsewhere = _fields(keys, "bad3", reply_to=f"{keys.prefix}:usage:1:20260101")
        add_raw(redis_client, keys, version_id, elsewhere)
        add_raw(redis_client, keys, version_id, _fields(keys, "bad4", max_tokens=-5))
        ok = enqueue(redis_client, keys, version_id, max_tokens=2)
        assert text(replies.until(ok)) == expected_text(2)
        (bad1,) = replies.until("bad1")
        (bad4,) = replies.until("bad4")
    assert bad1.code == "invalid_input" and bad1.finish == "error"
    assert bad4.code == "invalid_input" and "max_tokens" in bad4.error
    dead = redis_client.xrange(keys.dead_letter)
    assert len(dead) == 2  # the unparseable one and the one whose reply is not a reply stream
    assert not redis_client.exists(f"{keys.prefix}:usage:1:20260101")
    assert _queue_empty(redis_client, keys, version_id)


def _fields(keys: RedisKeys, rid: str, reply_to: str = "", max_tokens: int = 2) -> dict[bytes, bytes]:
    now = int(time.time() * 1000)
    h = {
        "id": rid,
        "reply": reply_to or keys.reply_stream(GATEWAY),
        "deadline": now + 30_000,
        "enq": now,
        "tenant": 1,
        "model": "chat",
        "mode": "completion",
        "stream": True,
        "params": {"max_tokens": max_tokens},
        "prompt": "hi",
    }
    return {b"v": b"1", b"k": b"gen", b"h": orjson.dumps(h)}


def test_load_failure_and_wrong_format(redis_client, keys, registry, tmp_path, redis_prefix) -> None:
    gen = register_gen_version(registry, tmp_path, "broken")
    onnx = register_gen_version(registry, tmp_path, "vision", fmt="onnx")
    with running_loop(base.REDIS_URL, redis_prefix, registry, load_failing):
        replies = Replies(redis_client, keys)
        (failed,) = replies.until(enqueue(redis_client, keys, gen))
        (again,) = replies.until(enqueue(redis_client, keys, gen))
        (wrong,) = replies.until(enqueue(redis_client, keys, onnx))
    assert failed.code == again.code == "load_failed" and "/secret" not in failed.error
    assert wrong.code == "invalid_input" and "does not generate text" in wrong.error
    assert _queue_empty(redis_client, keys, gen) and _queue_empty(redis_client, keys, onnx)


def test_beyond_max_running_entries_stay_queued_for_others(
    redis_client, keys, registry, version_id, redis_prefix, monkeypatch
) -> None:
    monkeypatch.setenv("KILN_TEST_GEN_STEP_MS", "20")
    monkeypatch.setenv("KILN_TEST_GEN_CONTEXT", "2000")
    config = GenConfig(max_running=2, claim_idle_ms=60_000, idle_block_ms=20)
    backends: list[StepBackend] = []

    def loader(version, path):  # type: ignore[no-untyped-def]
        backends.append(load(version, path))
        return backends[-1]

    stream = keys.gen_stream(version_id)
    with running_loop(base.REDIS_URL, redis_prefix, registry, loader, config):
        replies = Replies(redis_client, keys)
        rids = [enqueue(redis_client, keys, version_id, max_tokens=100) for _ in range(5)]
        replies.until(rids[0], n=1)
        pending = redis_client.xpending(stream, GROUP)["pending"]
        assert pending <= 2 and redis_client.xlen(stream) == 5  # three never read by this worker
        for rid in rids:
            assert text(replies.until(rid)) == expected_text(100)
    assert _queue_empty(redis_client, keys, version_id)


def test_taken_over_entries_stream_gets_worker_lost_others_are_retried(
    redis_client, keys, registry, version_id, redis_prefix
) -> None:
    stream = keys.gen_stream(version_id)
    redis_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    streaming = enqueue(redis_client, keys, version_id, max_tokens=5)
    whole = enqueue(redis_client, keys, version_id, stream=False, max_tokens=5)
    poison = enqueue(redis_client, keys, version_id, stream=False, max_tokens=5)
    unstarted = enqueue(redis_client, keys, version_id, max_tokens=5)
    # a consumer that reads all four and dies; it had sent 3 chunks of the first, none of the last
    redis_client.xreadgroup(GROUP, "dead-worker", {stream: ">"}, count=4)
    redis_client.set(keys.gen_progress(streaming), 3)
    for _ in range(3):  # the poison entry was already delivered four times in all
        redis_client.xclaim(stream, GROUP, "dead-worker", 0, [redis_client.xrange(stream)[2][0]])
    with running_loop(base.REDIS_URL, redis_prefix, registry, load):
        replies = Replies(redis_client, keys)
        (lost,) = replies.until(streaming)
        retried = replies.until(whole)
        (dead,) = replies.until(poison)
        fresh = replies.until(unstarted)
    assert text(fresh) == expected_text(5) and fresh[0].seq == 0  # nothing sent: generated whole
    assert lost.code == "worker_lost" and lost.seq == 3 and lost.done and "incomplete" in lost.error
    assert text(retried) == expected_text(5) and retried[-1].finish == "length"
    assert dead.code == "model_error" and "dead-lettered" in dead.error
    assert len(redis_client.xrange(keys.dead_letter)) == 1
    assert _queue_empty(redis_client, keys, version_id)
    day = redis_client.hgetall(keys.usage_day(1, day_of(time.time())))
    assert day[b"chat|1|7|r"] == b"2"  # the two generated were charged, once each


def test_a_slow_load_does_not_stall_other_versions_streams(
    redis_client, keys, registry, version_id, tmp_path, redis_prefix
) -> None:
    slow = register_gen_version(registry, tmp_path, "big")
    release = threading.Event()

    def loader(version, path):  # type: ignore[no-untyped-def]
        if version.version_id == slow:
            release.wait(60)  # a load that takes as long as the test wants
        return load(version, path)

    with running_loop(base.REDIS_URL, redis_prefix, registry, loader) as (loop, _reg):
        replies = Replies(redis_client, keys)
        fast = enqueue(redis_client, keys, version_id, max_tokens=4)
        assert text(replies.until(fast)) == expected_text(4)  # the first version is loaded
        waiting = enqueue(redis_client, keys, slow, max_tokens=4)
        poll_until(lambda: slow in loop.backends._loading)
        during = enqueue(redis_client, keys, version_id, max_tokens=6)
        chunks = replies.until(during)  # streamed and finished while the other version loads
        assert text(chunks) == expected_text(6) and not replies.chunks.get(waiting)
        release.set()
        assert text(replies.until(waiting)) == expected_text(4)
    assert _queue_empty(redis_client, keys, slow) and _queue_empty(redis_client, keys, version_id)


def poll_until(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met"
        time.sleep(0.01)


def test_a_backend_that_dies_fails_its_requests_alone(
    redis_client, keys, registry, version_id, tmp_path, redis_prefix
) -> None:
    other = register_gen_version(registry, tmp_path, "other")
    with running_loop(base.REDIS_URL, redis_prefix, registry, load) as (loop, _reg):
        replies = Replies(redis_client, keys)
        replies.until(enqueue(redis_client, keys, version_id, max_tokens=1))
        victim = enqueue(redis_client, keys, version_id, max_tokens=30, prompt="CRASHPOLL")
        chunks = replies.until(victim)
        ok = enqueue(redis_client, keys, other, max_tokens=3)
        assert text(replies.until(ok)) == expected_text(3)
        assert version_id not in loop.backends.hosted and other in loop.backends.hosted
    assert chunks[-1].code == "model_error" and chunks[-1].done and "died" not in chunks[-1].error
    assert _queue_empty(redis_client, keys, version_id)
