"""A worker killed (-9) mid-generation: another worker takes its entries over; the streaming
client gets a worker_lost error chunk numbered after what it already has (never a silent
truncation), the non-streaming request is generated again from scratch and completes, charged
once. Real `kiln worker` processes, the test backend at a slow pace, the real Redis and database."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import pytest
import redis

import tests.conftest as base
from model_store.registry import Registry
from tests.e2e.harness import Stack, metric_sum
from tests.generation_backend import expected_text, register_gen_version
from tests.integration.gen_helpers import Replies, enqueue, text
from workers.contract.redis_keys import GROUP, RedisKeys
from workers.contract.usage import day_of

pytestmark = pytest.mark.e2e
GEN_WORKER = "tests.e2e.gen_worker"


def _worker_pid(worker_id: str) -> int:
    return int(worker_id.rsplit("-gen-", 1)[0].rsplit("-", 1)[1])


def test_killed_worker_stream_gets_worker_lost_and_non_stream_is_retried(
    make_stack, registry: Registry, tmp_path: Path, redis_prefix: str
) -> None:
    vid = register_gen_version(registry, tmp_path)
    stack: Stack = make_stack(KILN_TEST_GEN_CONTEXT="1000")
    keys = RedisKeys(redis_prefix)
    r = redis.Redis.from_url(base.REDIS_URL)
    w1 = stack.start_worker("w1", GEN_WORKER, {"KILN_TEST_GEN_STEP_MS": "200"})  # slow: 40 s a request
    replies = Replies(r, keys)
    streaming = enqueue(r, keys, vid, max_tokens=200, deadline_s=300)
    whole = enqueue(r, keys, vid, stream=False, max_tokens=200, deadline_s=300)
    first = replies.until(streaming, n=2)
    assert _worker_pid(first[0].worker) == w1.popen.pid
    stack.start_worker("w2", GEN_WORKER, {"KILN_TEST_GEN_STEP_MS": "10"})  # ready when /metrics answers
    assert not replies.chunks[streaming][-1].done, "the stream ended before the kill: slow the backend"
    w1.kill9()
    chunks = replies.until(streaming, timeout=60)
    lost = chunks[-1]
    assert lost.code == "worker_lost" and lost.finish == "error" and lost.done
    assert [c.seq for c in chunks] == list(range(len(chunks)))  # numbered after what the client had
    assert text(chunks) == expected_text(sum(c.tokens for c in chunks))  # a prefix, then the error
    retried = replies.until(whole, timeout=90)
    assert text(retried) == expected_text(200) and retried[-1].finish == "length"
    assert _worker_pid(retried[-1].worker) != w1.popen.pid
    stream = keys.gen_stream(vid)
    assert r.xlen(stream) == 0 and r.xpending(stream, GROUP)["pending"] == 0
    day = r.hgetall(keys.usage_day(1, day_of(time.time())))
    assert day[b"chat|1|7|r"] == b"1" and day[b"chat|1|7|g"] == b"200"  # the answering attempt only
    beats = [orjson.loads(r.get(k)) for k in r.scan_iter(match=keys.worker_pattern)]
    assert any(b.get("generation") == [vid] for b in beats)  # the heartbeat lists it
    metrics = httpx.get(f"http://127.0.0.1:{stack.worker_ports['w2']}/metrics", timeout=10).text
    assert metric_sum(metrics, "kiln_gen_generation_tokens_total") == 200
    assert "kiln_gen_num_requests_running{" in metrics and "kiln_gen_time_to_first_token_seconds" in metrics
