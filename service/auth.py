"""Authentication: bearer key -> Principal, with a short in-process cache so the hot path does
not touch the database; revocation takes effect within the cache TTL (seconds)."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service import keys
from service.errors import Forbidden, Unauthorized
from service.keys import Principal

_MAX_CACHE = 50_000
_BEARER = "bearer "


class Authenticator:
    def __init__(self, sessions: sessionmaker[Session], ttl_s: float) -> None:
        self._sessions = sessions
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization[:7].lower() == _BEARER:
            raise Unauthorized("missing bearer API key", headers={"WWW-Authenticate": "Bearer"})
        secret = authorization[7:].strip()
        if not secret or len(secret) > 256:
            raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})
        now = time.monotonic()
        hit = self._cache.get(secret)
        if hit is not None and hit[0] > now:
            principal = hit[1]
        else:
            principal = await run_in_threadpool(keys.lookup, self._sessions, secret)
            if len(self._cache) >= _MAX_CACHE:
                self._cache.clear()
            self._cache[secret] = (now + self._ttl, principal)
        if principal is None:
            raise Unauthorized("invalid, expired or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        return principal


def require_scope(principal: Principal, scope: str) -> Principal:
    if not principal.has(scope):
        raise Forbidden(f"this key lacks the {scope!r} scope")
    return principal
