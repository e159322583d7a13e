"""The one place Redis clients are made (gateway, workers, trainers): same pools, same retries.

A command that meets a dropped connection or a timeout is retried twice on a fresh connection,
with a short exponential backoff (redis-py's Retry), so a Redis restart or a connection the
server closed costs a request a few milliseconds, not an error. Anything longer is still an error
the caller sees (RedisError / OSError): callers map it to 503, never wait on their own.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

RETRIES = 2


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.25, base=0.02)


def retry() -> Retry:
    """Retry on ConnectionError and TimeoutError: 2 more tries, 20 ms then 40 ms apart (cap 250 ms)."""
    return Retry(_backoff(), RETRIES)


def retry_async() -> AsyncRetry:
    """The same policy for asyncio clients: redis-py's asyncio pools take the asyncio Retry (its
    backoff sleeps with asyncio.sleep; a synchronous Retry given to them is a warning since 8.2)."""
    return AsyncRetry(_backoff(), RETRIES)


def connect_async(url: str, *, max_connections: int = 64, wait_s: float = 10.0) -> aioredis.Redis:
    """An asyncio client on a blocking pool: under a burst, a command waits up to `wait_s` for a
    free connection (of `max_connections`) instead of failing."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=wait_s, retry=retry_async()
    )
    return aioredis.Redis(connection_pool=pool)


def connect_async_single(url: str) -> aioredis.Redis:
    """An asyncio client with one connection: for a loop that blocks on reads (XREAD BLOCK)."""
    return aioredis.Redis(
        connection_pool=aioredis.ConnectionPool.from_url(url, max_connections=1, retry=retry_async())
    )


def connect_sync(url: str, **options: Any) -> redis.Redis:
    """A blocking client (workers, trainers); `options` are redis-py connection options
    (socket_timeout, socket_connect_timeout, health_check_interval ...)."""
    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, retry=retry(), **options))
