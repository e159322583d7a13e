"""Usage splitting, bounded tenant labels, the optional key field of the wire header, limits."""

from __future__ import annotations

import asyncio
import math

import orjson
import pytest
from pydantic import ValidationError

from service.tenancy.admission import seconds_to_month_end
from service.tenancy.limits import Limits
from workers.contract.messages import InferRequestMsg, TensorMeta
from workers.contract.usage import OTHER, TenantLabels, parse_field, split_compute


def test_compute_is_split_by_item_count_and_sums_to_the_batch() -> None:
    charges = split_compute("m", 3, [(1, 10, 1), (2, 20, 3), (1, 11, 4)], 0.8)
    assert [c.compute_s for c in charges] == pytest.approx([0.1, 0.3, 0.4])
    assert math.fsum(c.compute_s for c in charges) == pytest.approx(0.8, rel=1e-12)
    assert [(c.tenant_id, c.key_id, c.items) for c in charges] == [(1, 10, 1), (2, 20, 3), (1, 11, 4)]


def test_tenant_labels_fold_into_other_past_the_limit() -> None:
    labels = TenantLabels(limit=2)
    assert [labels(t) for t in (5, 6, 7, 5, 8, 6)] == ["5", "6", OTHER, "5", OTHER, "6"]


def test_usage_field_round_trip() -> None:
    assert parse_field("my.model-1|2|33|c") == ("my.model-1", 2, 33, "c")
    assert parse_field("garbage") is None
    assert parse_field("m|x|1|c") is None


def _msg(**extra: object) -> InferRequestMsg:
    return InferRequestMsg(
        request_id="r",
        reply_to="s",
        deadline_ms=2,
        enqueued_ms=1,
        tenant_id=7,
        inputs=[TensorMeta("x", "FP32", (1,))],
        tensors=[b"\0\0\0\0"],
        **extra,  # type: ignore[arg-type]
    )


def test_key_id_is_optional_in_contract_version_1() -> None:
    fields = _msg(key_id=42).to_fields()
    assert InferRequestMsg.from_fields(fields).key_id == 42
    old = _msg().to_fields()  # a gateway that never sends the key
    assert b'"key"' not in old[b"h"]
    assert InferRequestMsg.from_fields(old).key_id == 0
    header = orjson.loads(fields[b"h"])
    header.pop("key")
    fields[b"h"] = orjson.dumps(header)
    assert InferRequestMsg.from_fields(fields).key_id == 0


def test_limits() -> None:
    assert Limits.from_row(None) is None and Limits.from_row({"burst": 5}) is None
    lim = Limits.from_row({"rate_per_s": 2.5})
    assert lim is not None and lim.bucket == 3 and lim.any
    with pytest.raises(ValidationError):
        Limits.model_validate({"rate_per_s": -1})
    with pytest.raises(ValidationError):
        Limits.model_validate({"unknown": 1})


def test_seconds_to_month_end() -> None:
    # 2026-02-28 23:59:00 UTC -> 60 s to March
    assert seconds_to_month_end(1_772_323_140.0) == pytest.approx(60.0)


async def test_cache_drops_a_stale_entry_on_a_definitive_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from service import cache as cache_mod
    from service.cache import AsyncTTLCache

    now = [1000.0]
    monkeypatch.setattr(cache_mod.time, "monotonic", lambda: now[0])
    answers: list[object] = [1, LookupError("gone")]

    async def load() -> int:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return int(answer)  # type: ignore[call-overload]

    cache: AsyncTTLCache[int] = AsyncTTLCache(ttl_s=1, max_stale_s=30, evict_on=(LookupError,))
    assert await cache.get("k", load) == 1
    now[0] += 2  # expired: served stale once while the refresh runs
    assert await cache.get("k", load) == 1
    for _ in range(3):
        await asyncio.sleep(0)
    answers.append(LookupError("still gone"))
    with pytest.raises(LookupError):  # the stale entry is gone: no 30 s of stale answers
        await cache.get("k", load)
