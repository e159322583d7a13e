"""Authentication: bearer key -> Principal, with a short in-process cache so the hot path does
not touch the database. A revoked key stops working within about one cache TTL (seconds):
after the TTL the next request triggers a refresh from the database."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.cache import AsyncTTLCache
from service.errors import Forbidden, Unauthorized
from service.tenancy import api_keys as keys
from service.tenancy.api_keys import Principal

_BEARER = "bearer "
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class Authenticator:
    def __init__(self, sessions: sessionmaker[Session], ttl_s: float) -> None:
        self._sessions = sessions
        # stale answers are served only while one refresh runs, never for long: revocation
        # must show within seconds
        self._cache: AsyncTTLCache[Principal | None] = AsyncTTLCache(ttl_s, 50_000, max_stale_s=ttl_s)

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or authorization[:7].lower() != _BEARER:
            raise Unauthorized("missing bearer API key", headers=_CHALLENGE)
        secret = authorization[7:].strip()
        if not secret or len(secret) > 256:
            raise Unauthorized("invalid API key", headers=_CHALLENGE)
        principal = await self._cache.get(
            secret, lambda: run_in_threadpool(keys.lookup, self._sessions, secret)
        )
        if principal is None:
            raise Unauthorized("invalid, expired or revoked API key", headers=_CHALLENGE)
        return principal


def require_scope(principal: Principal, scope: str) -> Principal:
    if not principal.has(scope):
        raise Forbidden(f"this key lacks the {scope!r} scope")
    return principal
