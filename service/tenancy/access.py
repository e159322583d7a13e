"""Access policy: the one place that decides what a key may do beyond its scope.

- A key's *power* is its tenant, scopes (admin implies all), model allowlist, expiry, limits and
  priority cap. A key may create, rotate or revoke only keys with no more power than its own;
  a new key inherits its creator's restrictions unless it asks for tighter ones.
- The model allowlist applies to every call that names a model.
- The `finetune` scope makes new models only; publishing into an existing one needs `manage`.

Everything here raises `Forbidden` (403) with a message that says what was refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from model_store.db import ApiKeyRow, utcnow
from model_store.registry import Registry, ResolvedVersion
from service.errors import Forbidden
from service.tenancy.api_keys import SCOPES, Principal
from service.tenancy.limits import Limits

_CAPPED = (
    "rate_per_s",
    "max_concurrent",
    "monthly_requests",
    "monthly_compute_s",
    "tokens_per_min",
    "monthly_tokens",
)


def effective_scopes(scopes: Iterable[str]) -> frozenset[str]:
    held = frozenset(scopes)
    return frozenset(SCOPES) if "admin" in held else held


def _aware(ts: datetime | None) -> datetime | None:
    if ts is None or ts.tzinfo is not None:
        return ts
    return ts.replace(tzinfo=utcnow().tzinfo)


@dataclass(frozen=True, slots=True)
class KeyPower:
    """Everything a key may do; compared key against key."""

    tenant_id: int
    scopes: frozenset[str]
    models: frozenset[str] | None = None  # None: every model
    expires_at: datetime | None = None
    limits: Limits | None = None
    priority_cap: int = 1

    @classmethod
    def of(cls, principal: Principal) -> KeyPower:
        return cls(
            principal.tenant_id,
            frozenset(principal.scopes),
            principal.allowed_models,
            _aware(principal.expires_at),
            principal.key_limits,
            principal.priority_cap,
        )

    @classmethod
    def of_row(cls, row: ApiKeyRow) -> KeyPower:
        return cls(
            row.tenant_id,
            frozenset(row.scopes.split(",")),
            frozenset(row.allowed_models) if row.allowed_models is not None else None,
            _aware(row.expires_at),
            Limits.from_row(row.limits),
            row.priority_cap or 1,
        )


def _limit_excess(actor: Limits | None, target: Limits | None) -> str | None:
    if actor is None:
        return None
    for field in _CAPPED:
        mine = getattr(actor, field)
        theirs = getattr(target, field) if target is not None else 0
        if mine and (not theirs or theirs > mine):
            return f"limits.{field} {theirs or 'unlimited'} is above this key's {mine}"
    if actor.rate_per_s and target is not None and target.bucket > actor.bucket:
        return f"limits.burst {target.bucket} is above this key's {actor.bucket}"
    return None


def excess(actor: KeyPower, target: KeyPower) -> str | None:
    """What `target` may do that `actor` may not (None: nothing)."""
    mine = effective_scopes(actor.scopes)
    if "admin" not in mine and target.tenant_id != actor.tenant_id:
        return "it belongs to another tenant"
    extra = sorted(effective_scopes(target.scopes) - mine)
    if extra:
        return f"scope {extra[0]!r}"
    if actor.models is not None:
        if target.models is None:
            return "every model (this key has a model allowlist)"
        outside = sorted(target.models - actor.models)
        if outside:
            return f"model {outside[0][:64]!r} (outside this key's allowlist)"
    if actor.expires_at is not None and (target.expires_at is None or target.expires_at > actor.expires_at):
        return f"an expiry later than this key's ({actor.expires_at.isoformat()})"
    limits = _limit_excess(actor.limits, target.limits)
    if limits:
        return limits
    if target.priority_cap < actor.priority_cap:
        return f"priority_cap {target.priority_cap} (this key's cap is {actor.priority_cap})"
    return None


def check_covers(principal: Principal, target: KeyPower, action: str) -> None:
    """403 unless `principal` has at least `target`'s power."""
    reason = excess(KeyPower.of(principal), target)
    if reason is not None:
        raise Forbidden(f"this key cannot {action} a key with more power than its own: {reason}")


def _merged_limits(inherited: Limits | None, asked: Limits | None) -> Limits | None:
    """The asked fields (an explicit 0 asks for no limit); the creator's for the others."""
    if asked is None:
        return inherited
    base = inherited.model_dump() if inherited is not None else {}
    merged = Limits.model_validate(base | asked.model_dump(include=asked.model_fields_set))
    return merged if merged.any else None


def minted_power(
    principal: Principal,
    tenant_id: int,
    scopes: Iterable[str],
    models: list[str] | None = None,
    expires_in_s: int | None = None,
    limits: Limits | None = None,
    priority_cap: int | None = None,
) -> KeyPower:
    """The power of a key `principal` creates: what is asked, the creator's restrictions where
    nothing is asked. 403 when that is more than the creator's own."""
    mine = KeyPower.of(principal)
    power = replace(
        mine,
        tenant_id=tenant_id,
        scopes=frozenset(scopes),
        models=frozenset(models) if models is not None else mine.models,
        expires_at=utcnow() + timedelta(seconds=expires_in_s) if expires_in_s else mine.expires_at,
        limits=_merged_limits(mine.limits, limits),
        priority_cap=priority_cap if priority_cap is not None else mine.priority_cap,
    )
    check_covers(principal, power, "create")
    return power


# models ------------------------------------------------------------------------------------------
def may_use(principal: Principal, model: str) -> bool:
    """Whether the key's model allowlist admits `model` (as the caller names it; no allowlist:
    every model the tenant can see). The one allowlist test: every path calls this."""
    return principal.allowed_models is None or model in principal.allowed_models


def check_model(principal: Principal, model: str) -> None:
    """403 when the key's model allowlist does not name `model` (as the caller names it)."""
    if not may_use(principal, model):
        raise Forbidden(f"this key may not use model {model[:64]!r}")


def allowed(principal: Principal, names: Iterable[str]) -> list[str]:
    """The names the key's allowlist admits, in order."""
    return [n for n in names if may_use(principal, n)]


def model_of(ref: str) -> str:
    """The model name in a fine-tune reference: `name`, `name:version`, `name:alias`."""
    return ref.partition(":")[0]


def check_finetune(
    principal: Principal, registry: Registry, model_ref: str, base: ResolvedVersion, target: str
) -> None:
    """A fine-tune job: both models in the key's allowlist; another tenant's base only with the
    owner's fine-tune grant; a `finetune` key makes new models only: publishing into an existing
    model (and so changing what it serves) needs `manage`."""
    check_model(principal, model_of(model_ref))
    check_model(principal, target)
    if not registry.may_finetune(principal.tenant_id, base):
        raise Forbidden(
            f"model {model_of(model_ref)[:64]!r} is shared for inference only: "
            "its owner does not allow fine-tuning it"
        )
    if not principal.has("manage") and registry.has_model(principal.tenant_id, target):
        raise Forbidden(
            f"model {target[:64]!r} exists: publishing into an existing model needs the 'manage' "
            "scope (a 'finetune' key creates new models only; choose another suffix or target_model)"
        )
