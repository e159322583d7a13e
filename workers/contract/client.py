"""The gateway side of the queue: submit to a version's stream, one reply reader per process.

One connection pool for writes, one dedicated connection for the blocking reply reader, one
future per in-flight request. No polling, no per-request connection. Everything else the gateway
keeps in Redis (asynchronous results, lifecycle commands, usage hashes, fine-tune dispatches)
goes through this class too: the gateway holds no Redis client of its own for the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from workers.contract.errors import EngineError, EngineUnavailable, QueueFull, ReplyTimeout
from workers.contract.finetune_queue import dispatch
from workers.contract.gen_client import CANCEL_TTL_S, GenReplies
from workers.contract.generation import GenChunkMsg, GenRequestMsg, is_gen
from workers.contract.messages import ContractError, InferReplyMsg, InferRequestMsg
from workers.contract.redis_conn import connect_async, connect_async_single
from workers.contract.redis_keys import RedisKeys

log = logging.getLogger("kiln.engine")
_READER_BACKOFF = ExponentialBackoff(cap=1.0, base=0.025)  # 0.05 s after a first failure, doubling to 1 s


# XADD to KEYS[1] only while the streams KEYS[2..] hold fewer than ARGV[1] entries in all
_BOUNDED_XADD = """
local total = 0
for i = 2, #KEYS do total = total + redis.call('XLEN', KEYS[i]) end
if total >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""


def _worker_info(raw: bytes | str) -> dict[str, Any]:
    try:
        info = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


def _unavailable(exc: BaseException) -> EngineUnavailable:
    log.warning("queue call failed: %s: %s", type(exc).__name__, exc)
    return EngineUnavailable("queue is unavailable")


class StreamsEngineClient:
    """EngineClient implemented on Redis Streams (workers/contract/messages.py documents each call)."""

    def __init__(self, redis_url: str, keys: RedisKeys, *, max_connections: int = 64) -> None:
        self.keys = keys
        self.gateway_id = uuid.uuid4().hex[:16]
        self.reply_stream = keys.reply_stream(self.gateway_id)
        # a blocking pool: under a burst, requests wait for a free connection instead of failing
        self._redis = connect_async(redis_url, max_connections=max_connections, wait_s=10)
        self._reader = connect_async_single(redis_url)
        self._pending: dict[str, asyncio.Future[InferReplyMsg]] = {}
        self._gen = GenReplies()  # generation chunks, one queue per request
        self._gen_announced: set[str] = set()
        self._announced: set[str] = set()
        self._outbox: list[tuple[str, dict[bytes, bytes], asyncio.Future[None]]] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Future[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._bounded_xadd = self._redis.register_script(_BOUNDED_XADD)
        self._closed = False
        self.connected = False

    async def start(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._reader.ping()
            self.connected = True
        self._task = asyncio.create_task(self._read_replies(), name="kiln-reply-reader")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._fail_all("gateway shutting down")
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self.reply_stream)
        await self._redis.aclose()
        await self._reader.aclose()

    async def submit(
        self, stream: str, msg: InferRequestMsg, *, bound: tuple[list[str], int] | None = None
    ) -> None:
        """Register the waiter, then enqueue (one round trip; the stream is announced once)."""
        if not self.connected:
            raise EngineUnavailable("queue is unavailable")
        fut: asyncio.Future[InferReplyMsg] = asyncio.get_running_loop().create_future()
        self._pending[msg.request_id] = fut
        try:
            await self._enqueue(stream, msg, bound)
        except BaseException:
            self._pending.pop(msg.request_id, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # failed by _fail_all meanwhile: retrieved, not logged at GC
            raise

    async def submit_async(
        self,
        stream: str,
        msg: InferRequestMsg,
        record: bytes,
        ttl_s: int,
        *,
        bound: tuple[list[str], int] | None = None,
    ) -> None:
        """Write `record` to the request's own result stream (msg.reply_to), then enqueue; no waiter."""
        if not self.connected:
            raise EngineUnavailable("queue is unavailable")
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(msg.reply_to, {b"record": record})
                pipe.expire(msg.reply_to, ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        try:
            await self._enqueue(stream, msg, bound)
        except EngineError:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(msg.reply_to)
            raise

    async def _enqueue(self, stream: str, msg: InferRequestMsg, bound: tuple[list[str], int] | None) -> None:
        try:
            if bound is None:
                await self._add(stream, msg)
            elif not await self._add_bounded(stream, msg, *bound):
                raise QueueFull("queue is full")
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def _add(self, stream: str, msg: InferRequestMsg) -> None:
        """Enqueue through the outbox: every entry added during one turn of the event loop goes
        to Redis in one pipeline (one write, one round trip), however many requests there are."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._outbox.append((stream, msg.to_fields(), done))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        await done

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        batch, self._outbox = self._outbox, []
        task = asyncio.ensure_future(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[str, dict[bytes, bytes], asyncio.Future[None]]]) -> None:
        new = {stream for stream, _f, _d in batch if stream not in self._announced}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream in new:
                    pipe.sadd(self.keys.streams, stream)
                for stream, fields, _done in batch:
                    pipe.xadd(stream, fields)  # type: ignore[arg-type,unused-ignore]
                await pipe.execute()
        except BaseException as exc:  # every waiter learns it (RedisError/OSError -> 503 upstream)
            for _s, _f, done in batch:
                if not done.done():
                    done.set_exception(exc if isinstance(exc, Exception) else EngineUnavailable("cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        self._announced.update(new)
        for _s, _f, done in batch:
            if not done.done():
                done.set_result(None)

    async def _add_bounded(self, stream: str, msg: InferRequestMsg, streams: list[str], limit: int) -> bool:
        if stream not in self._announced:
            await self._redis.sadd(self.keys.streams, stream)
            self._announced.add(stream)
        args: list[Any] = [limit]
        for k, v in msg.to_fields().items():
            args += [k, v]
        added = await self._bounded_xadd(keys=[stream, *streams], args=args)
        return added is not None

    # text generation (workers/contract/generation.py) ----------------------------------------
    async def submit_gen(self, stream: str, msg: GenRequestMsg) -> None:
        """Open the request's chunk queue, then enqueue it (the stream announced once)."""
        if not self.connected:
            raise EngineUnavailable("queue is unavailable")
        self._gen.open(msg.request_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                if stream not in self._gen_announced:
                    pipe.sadd(self.keys.gen_streams, stream)
                pipe.xadd(stream, msg.to_fields())  # type: ignore[arg-type,unused-ignore]
                await pipe.execute()
        except BaseException as exc:
            self._gen.close(msg.request_id)
            if isinstance(exc, RedisError | OSError):
                raise _unavailable(exc) from exc
            raise
        self._gen_announced.add(stream)

    def gen_chunks(self, request_id: str, timeout_s: float) -> AsyncIterator[GenChunkMsg]:
        """The chunks of a submitted generation in order, until its last (see GenReplies.chunks)."""
        return self._gen.chunks(request_id, time.monotonic() + timeout_s)

    async def finish_gen(self, request_id: str, *, cancel: bool = False) -> None:
        """Forget a generation's queue; with `cancel`, tell its worker to stop (the cancel key,
        with a TTL). Never raises."""
        self._gen.close(request_id)
        if cancel:
            try:
                await self._redis.set(self.keys.gen_cancel(request_id), b"1", ex=CANCEL_TTL_S)
            except (RedisError, OSError) as exc:
                log.warning("could not cancel a generation: %s", type(exc).__name__)

    async def wait(self, request_id: str, timeout_s: float) -> InferReplyMsg:
        fut = self._pending.get(request_id)
        if fut is None:
            raise KeyError(request_id)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError as exc:
            raise ReplyTimeout("no reply before the deadline") from exc
        finally:
            self._pending.pop(request_id, None)

    async def cancel(self, request_id: str) -> None:
        fut = self._pending.pop(request_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def health(self) -> dict[str, Any]:
        try:
            await self._redis.ping()
            infos = await self._worker_infos()
        except (RedisError, OSError):
            return {"redis": False, "workers": 0, "workers_not_ready": 0}
        ready = sum(1 for i in infos if i.get("ready", True))
        return {"redis": True, "workers": ready, "workers_not_ready": len(infos) - ready}

    async def worker_infos(self) -> list[dict[str, Any]]:
        """The heartbeats of live workers (what each has loaded, whether it is ready)."""
        try:
            return await self._worker_infos()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def _worker_infos(self) -> list[dict[str, Any]]:
        keys = [k async for k in self._redis.scan_iter(match=self.keys.worker_pattern, count=100)]
        beats = await self._redis.mget(keys) if keys else []
        return [_worker_info(b) for b in beats if b]

    async def async_result(self, request_id: str) -> tuple[bytes, dict[bytes, bytes] | None] | None:
        """(record, the reply's fields or None while pending) of an asynchronous request."""
        try:
            entries: Any = await self._redis.xrange(self.keys.async_result(request_id), count=2)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        if not entries or b"record" not in entries[0][1]:
            return None
        return entries[0][1][b"record"], entries[1][1] if len(entries) > 1 else None

    async def lifecycle_commands(self) -> dict[int, str]:
        """Version id -> the latest load/unload command for it."""
        try:
            raw: Any = await self._redis.hgetall(self.keys.lifecycle)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return {int(k): v.decode() for k, v in (raw or {}).items()}

    async def command_lifecycle(self, version_ids: list[int], action: str) -> None:
        """Leave `action` ("load" or "unload") for every worker, for each of `version_ids`."""
        nonce = uuid.uuid4().hex[:12]
        try:
            await self._redis.hset(
                self.keys.lifecycle, mapping={str(v): f"{action}:{nonce}" for v in version_ids}
            )
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def usage_days(self, tenant_id: int, days: list[str]) -> list[dict[bytes, bytes]]:
        """A tenant's usage hash of each day (YYYYMMDD), in order (one round trip)."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for day in days:
                    pipe.hgetall(self.keys.usage_day(tenant_id, day))
                hashes: list[dict[bytes, bytes]] = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return hashes

    async def dispatch_finetune(self, job_id: str) -> None:
        """Tell the trainers about a queued fine-tune job."""
        try:
            await dispatch(self._redis, self.keys, job_id)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    def _fail_all(self, reason: str) -> None:
        """Every waiter ends with EngineUnavailable. The futures stay in `_pending` until their
        requests take them out (wait, a failed submit, cancel): a request whose enqueue finished
        just before the loss but that has not reached `wait` yet learns it there too."""
        self._gen.fail_all(reason)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(EngineUnavailable(reason))

    async def _read_replies(self) -> None:
        """Read replies until closed; while Redis is away, fail every waiter and retry with
        backoff (reset by a read that succeeds)."""
        last_id: Any = "0-0"
        errors = (RedisError, OSError)  # redis-py types this as RedisError subclasses only
        retry = Retry(_READER_BACKOFF, retries=-1, supported_errors=errors)
        while not self._closed:
            resp = await retry.call_with_retry(functools.partial(self._read_once, last_id), self._lost)
            for _stream, entries in resp or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    self._resolve(fields)

    async def _read_once(self, last_id: Any) -> Any:
        if not self.connected:
            await self._reader.ping()
            self.connected = True
        return await self._reader.xread({self.reply_stream: last_id}, count=1024, block=1000)

    async def _lost(self, exc: Exception) -> None:
        if self.connected:
            log.warning("reply reader lost Redis: %s", type(exc).__name__)
        self.connected = False
        self._announced.clear()
        self._gen_announced.clear()
        self._fail_all("queue connection lost")

    def _resolve(self, fields: dict[bytes, bytes]) -> None:
        if is_gen(fields):
            self._gen.deliver(fields)
            return
        try:
            reply = InferReplyMsg.from_fields(fields)
        except ContractError:
            log.error("dropped a malformed reply")
            return
        fut = self._pending.get(reply.request_id)
        if fut is not None and not fut.done():
            fut.set_result(reply)
