"""The access policy (service/tenancy/access.py) on its own: key power compared key against key,
inheritance of restrictions when minting, the finetune scope and the allowlist."""

from __future__ import annotations

from datetime import timedelta

import pytest

from model_store.db import utcnow
from service.errors import Forbidden
from service.tenancy import access
from service.tenancy.access import KeyPower, excess, minted_power
from service.tenancy.api_keys import Principal
from service.tenancy.limits import Limits

SOON = utcnow() + timedelta(hours=1)


def _p(scopes: set[str], **kw: object) -> Principal:
    return Principal(1, 7, frozenset(scopes), "kiln_x", **kw)  # type: ignore[arg-type]


def _power(scopes: set[str], **kw: object) -> KeyPower:
    return KeyPower(7, frozenset(scopes), **kw)  # type: ignore[arg-type]


def test_admin_implies_every_scope_and_a_subset_is_covered() -> None:
    assert excess(_power({"admin"}), _power({"infer", "manage", "finetune"})) is None
    assert excess(_power({"manage"}), _power({"admin"})) == "scope 'admin'"
    assert excess(_power({"manage"}), _power({"infer"})) == "scope 'infer'"
    assert excess(_power({"manage", "infer"}), _power({"infer"})) is None


def test_another_tenant_only_for_admin() -> None:
    other = KeyPower(8, frozenset({"infer"}))
    assert excess(_power({"manage", "infer"}), other) == "it belongs to another tenant"
    assert excess(_power({"admin"}), other) is None


@pytest.mark.parametrize(
    ("actor", "target", "refused"),
    [
        ({"models": frozenset({"a"})}, {"models": None}, True),
        ({"models": frozenset({"a"})}, {"models": frozenset({"a", "b"})}, True),
        ({"models": frozenset({"a", "b"})}, {"models": frozenset({"a"})}, False),
        ({"expires_at": SOON}, {"expires_at": None}, True),
        ({"expires_at": SOON}, {"expires_at": SOON + timedelta(seconds=1)}, True),
        ({"expires_at": SOON}, {"expires_at": SOON}, False),
        ({"limits": Limits(rate_per_s=5)}, {"limits": None}, True),
        ({"limits": Limits(rate_per_s=5)}, {"limits": Limits(rate_per_s=6)}, True),
        ({"limits": Limits(rate_per_s=5)}, {"limits": Limits(rate_per_s=5, burst=50)}, True),
        ({"limits": Limits(rate_per_s=5)}, {"limits": Limits(rate_per_s=2)}, False),
        ({"limits": Limits(monthly_requests=10)}, {"limits": Limits(rate_per_s=2)}, True),
        ({"limits": None}, {"limits": Limits(rate_per_s=2)}, False),
        ({"priority_cap": 2}, {"priority_cap": 1}, True),
        ({"priority_cap": 2}, {"priority_cap": 3}, False),
    ],
)
def test_each_restriction_is_compared(
    actor: dict[str, object], target: dict[str, object], refused: bool
) -> None:
    reason = excess(_power({"manage"}, **actor), _power({"manage"}, **target))
    assert (reason is not None) == refused, reason


def test_minting_inherits_what_is_not_asked() -> None:
    parent = _p(
        {"manage", "infer"},
        allowed_models=frozenset({"a", "b"}),
        key_limits=Limits(rate_per_s=10, max_concurrent=4),
        priority_cap=3,
        expires_at=SOON,
    )
    child = minted_power(parent, 7, ["infer"])
    assert child.models == {"a", "b"} and child.expires_at == SOON and child.priority_cap == 3
    assert child.limits == Limits(rate_per_s=10, max_concurrent=4)
    tighter = minted_power(parent, 7, ["infer"], models=["a"], limits=Limits(rate_per_s=1), priority_cap=5)
    assert tighter.models == {"a"} and tighter.priority_cap == 5
    assert tighter.limits == Limits(rate_per_s=1, max_concurrent=4)
    with pytest.raises(Forbidden, match="more power than its own"):
        minted_power(parent, 7, ["infer"], limits=Limits(max_concurrent=0))  # explicit 0: unlimited
    with pytest.raises(Forbidden):
        minted_power(parent, 7, ["infer"], expires_in_s=7200)


def test_an_unrestricted_key_mints_what_it_asks() -> None:
    child = minted_power(_p({"admin"}), 9, ["infer"], models=["m"], expires_in_s=60, priority_cap=2)
    assert child.tenant_id == 9 and child.models == {"m"} and child.expires_at is not None


def test_allowlist_and_finetune_reference() -> None:
    key = _p({"infer"}, allowed_models=frozenset({"a", "acme~b"}))
    access.check_model(key, "acme~b")
    with pytest.raises(Forbidden):
        access.check_model(key, "b")
    assert access.allowed(key, ["a", "b", "acme~b"]) == ["a", "acme~b"]
    assert access.model_of("acme~b:production") == "acme~b"
