"""Faults that take processes down, with real gateway and worker processes on the real Redis and
PostgreSQL: a request that crashes every worker that runs it is dead-lettered and the workers
survive; SIGTERM finishes what was read and loses nothing; a Redis restart fails requests in
flight fast (503) and everything reconnects."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait

import httpx
import numpy as np
import pytest
import redis

from service.cli.embedded import PrivateRedis
from tests.conftest import REDIS_URL
from tests.e2e.conftest import AUTH, FAULT_WORKER, poll, register_http
from tests.faults import CRASH_EXIT_CODE
from tests.models import demo_onnx_bytes, demo_reference
from workers.contract.redis_keys import GROUP, RedisKeys

pytestmark = pytest.mark.e2e


def _infer(url: str, x: np.ndarray, **params: object) -> httpx.Response:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}]
    }
    if params:
        body["parameters"] = params
    return httpx.post(f"{url}/v2/models/demo/infer", json=body, headers=AUTH, timeout=90)


def _check_ok(resp: httpx.Response, x: np.ndarray) -> None:
    assert resp.status_code == 200, resp.text
    y = np.array(resp.json()["outputs"][0]["data"], dtype=np.float32).reshape(x.shape[0], 3)
    np.testing.assert_allclose(y, demo_reference(x), atol=1e-5)


def test_request_that_crashes_its_workers_is_dead_lettered(make_stack, redis_prefix) -> None:
    stack = make_stack(KILN_MAX_DELIVERIES="2")
    stack.start_gateway()
    env = {"KILN_TEST_CRASH_ON": "-99"}
    workers = {name: stack.start_worker(name, FAULT_WORKER, env) for name in ("w1", "w2")}
    register_http(
        stack.url, "demo", demo_onnx_bytes(), "onnx", {"max_batch_size": 16, "max_queue_delay_ms": 20}
    )
    _check_ok(_infer(stack.url, np.ones((1, 4), np.float32)), np.ones((1, 4), np.float32))

    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(20)]
    poison = np.array([[1, -99, 3, 4]], dtype=np.float32)
    crashes = 0
    with ThreadPoolExecutor(24) as pool:
        bad = pool.submit(_infer, stack.url, poison)
        good = [pool.submit(_infer, stack.url, x) for x in xs]
        while not bad.done():  # restart each worker the poison kills, as a supervisor would
            for name, proc in list(workers.items()):
                if not proc.alive():
                    assert proc.popen.returncode == CRASH_EXIT_CODE, proc.log()
                    crashes += 1
                    workers[name] = stack.start_worker(name, FAULT_WORKER, env)
            wait([bad], timeout=0.05)
        resp = bad.result()
        assert resp.status_code == 500, resp.text
        assert resp.json()["code"] == "model_error" and "dead-lettered" in resp.json()["error"]
        for x, fut in zip(xs, good, strict=True):
            _check_ok(fut.result(), x)
    assert crashes == 2  # delivered twice (each delivery killed a worker), then dead-lettered
    assert all(p.alive() for p in workers.values())
    r = redis.Redis.from_url(REDIS_URL)
    keys = RedisKeys(redis_prefix)
    dead = r.xrange(keys.dead_letter)
    assert len(dead) == 1 and dead[0][1][b"deliveries"] == b"3"
    assert r.xpending(keys.request_stream(1), GROUP)["pending"] == 0
    assert r.xlen(keys.request_stream(1)) == 0
    _check_ok(_infer(stack.url, xs[0]), xs[0])  # the workers still serve


def test_sigterm_finishes_what_was_read_and_loses_nothing(make_stack, redis_prefix) -> None:
    stack = make_stack(KILN_WORKER_READ_COUNT="4")
    stack.start_gateway()
    env = {"KILN_TEST_DELAY_MS": "40"}
    w1 = stack.start_worker("w1", FAULT_WORKER, env)
    register_http(
        stack.url, "demo", demo_onnx_bytes(), "onnx", {"max_batch_size": 4, "max_queue_delay_ms": 5}
    )
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(60)]
    r = redis.Redis.from_url(REDIS_URL)
    stream = RedisKeys(redis_prefix).request_stream(1)
    with ThreadPoolExecutor(60) as pool:
        futs = [pool.submit(_infer, stack.url, x) for x in xs]
        poll(lambda: sum(f.done() for f in futs) >= 8, what="some answers")
        assert w1.terminate() == 0  # SIGTERM: stop reading, finish what was read, exit cleanly
        # everything the stopped worker read was answered and acknowledged; the rest is queued
        assert r.xpending(stream, GROUP)["pending"] == 0
        # requests still on their way from the client threads land in the queue, none go missing
        poll(
            lambda: sum(f.done() for f in futs) + r.xlen(stream) >= 60,
            what="every request answered or queued",
        )
        stack.start_worker("w2", FAULT_WORKER, env)
        for x, fut in zip(xs, futs, strict=True):
            _check_ok(fut.result(timeout=120), x)
    assert r.xpending(stream, GROUP)["pending"] == 0 and r.xlen(stream) == 0


def test_redis_restart_fails_in_flight_fast_and_everything_reconnects(make_stack, tmp_path) -> None:
    """A private redis-server (never the shared one) is killed and started again."""
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        stack = make_stack(redis_url=server.url, KILN_REQUEST_TIMEOUT_S="60")
        stack.start_gateway()
        env = {"KILN_TEST_SLOW_ON": "-5", "KILN_TEST_DELAY_MS": "4000"}
        worker = stack.start_worker("w1", FAULT_WORKER, env)
        register_http(stack.url, "demo", demo_onnx_bytes(), "onnx", {"max_batch_size": 8})
        x = np.ones((1, 4), np.float32)
        _check_ok(_infer(stack.url, x), x)
        r = redis.Redis(unix_socket_path=str(server.socket))
        stream = RedisKeys(stack.env["KILN_REDIS_PREFIX"]).request_stream(1)
        slow = np.array([[-5, 1, 1, 1]], np.float32)
        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(_infer, stack.url, slow) for _ in range(4)]
            poll(lambda: r.xpending(stream, GROUP)["pending"] >= 1, what="a request in flight")
            assert server.proc is not None
            server.proc.kill()
            server.proc.wait(10)
            for fut in futs:  # in flight: 503 now, not a hang until the 60 s deadline
                resp = fut.result(timeout=30)
                assert resp.status_code == 503 and resp.json()["code"] == "unavailable", resp.text
                assert resp.headers["retry-after"]
        resp = _infer(stack.url, x)
        assert resp.status_code == 503 and resp.headers["retry-after"]
        assert httpx.get(f"{stack.url}/v2/health/ready", timeout=10).status_code == 503

        server.start()  # empty: nothing persisted; gateways and workers rebuild what they need
        poll(lambda: _infer(stack.url, x).status_code == 200, timeout=60, what="service after restart")
        _check_ok(_infer(stack.url, x), x)
        poll(lambda: httpx.get(f"{stack.url}/v2/health/ready", timeout=10).status_code == 200, what="ready")
        assert worker.alive()
    finally:
        server.stop()
