"""OpenAI's fine-tuning request and response shapes, mapped onto this platform's.

Accepted on create, beside this platform's own names: `n_epochs`, `batch_size` and
`learning_rate_multiplier`, each a number or `"auto"` (the platform's default: 3 epochs, batch 32,
multiplier 1 = learning rate 1e-3); OpenAI's `method` object
(`{"type": "supervised", "supervised": {"hyperparameters": {...}}}`; only `supervised`). A value
that is neither a valid number nor "auto" is refused with a message that names the field.
Answered on every job: the same three names and `method`, `trained_tokens` and `estimated_finish`.
"""

from __future__ import annotations

import math
import time
from typing import Any

from model_store.db import FineTuneJobRow
from model_store.jobs import unix
from workers.contract.finetune_spec import Hyperparameters

AUTO = "auto"
DEFAULT_LR: float = Hyperparameters.model_fields["learning_rate"].default
MAX_MULTIPLIER = 10 / DEFAULT_LR  # learning_rate's upper bound
# OpenAI name -> (this platform's name, what a valid value is)
_OPENAI = {
    "n_epochs": ("epochs", "a positive integer"),
    "batch_size": ("batch_size", "a positive integer"),
    "learning_rate_multiplier": ("learning_rate", f"a number above 0 and at most {MAX_MULTIPLIER:g}"),
}


def normalize(body: dict[str, Any]) -> dict[str, Any]:
    """A create body in OpenAI's or this platform's shape -> this platform's (ValueError if bad)."""
    body = dict(body)
    hp = body.get("hyperparameters")
    if "method" in body:
        from_method = _method(body.pop("method"))
        if hp:
            raise ValueError(
                "give hyperparameters in method.supervised.hyperparameters or at the top, not both"
            )
        hp = from_method
    if hp is not None:
        if not isinstance(hp, dict):
            raise ValueError("hyperparameters must be an object")
        body["hyperparameters"] = _hyperparameters(hp)
    return body


def _method(method: Any) -> dict[str, Any]:
    shape = 'method must be {"type": "supervised", "supervised": {"hyperparameters": {...}}}'
    if not isinstance(method, dict):
        raise ValueError(shape)
    if method.get("type") != "supervised":
        raise ValueError(f"method type {method.get('type')!r} is not supported; use 'supervised'")
    if set(method) - {"type", "supervised"}:
        raise ValueError(shape)
    supervised = method.get("supervised") or {}
    if not isinstance(supervised, dict) or set(supervised) - {"hyperparameters"}:
        raise ValueError("method.supervised may hold only hyperparameters")
    hp = supervised.get("hyperparameters") or {}
    if not isinstance(hp, dict):
        raise ValueError("method.supervised.hyperparameters must be an object")
    return hp


def _hyperparameters(hp: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in hp.items() if k not in _OPENAI}
    for key, (ours, valid) in _OPENAI.items():
        if key not in hp:
            continue
        value = hp[key]
        if ours in out and ours != key:
            raise ValueError(f"hyperparameters: give {key} or {ours}, not both")
        if value == AUTO:
            out.pop(ours, None)
            continue
        if key == "learning_rate_multiplier":
            if not _number(value) or not 0 < value <= MAX_MULTIPLIER:
                raise ValueError(f'hyperparameters.{key} must be {valid} or "auto"')
            out[ours] = value * DEFAULT_LR
        else:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'hyperparameters.{key} must be {valid} or "auto"')
            out[ours] = value
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def public_hyperparameters(hp: Hyperparameters) -> dict[str, Any]:
    """The job's hyperparameters under both this platform's names and OpenAI's."""
    out = hp.model_dump(mode="json")
    out["n_epochs"] = hp.epochs
    out["learning_rate_multiplier"] = hp.learning_rate / DEFAULT_LR
    return out


def method(hp: Hyperparameters) -> dict[str, Any]:
    openai = {
        "n_epochs": hp.epochs,
        "batch_size": hp.batch_size,
        "learning_rate_multiplier": hp.learning_rate / DEFAULT_LR,
    }
    return {"type": "supervised", "supervised": {"hyperparameters": openai}}


def estimated_finish(row: FineTuneJobRow, now: float | None = None) -> int | None:
    """While running: when the job should end at the pace of its steps so far (unix seconds)."""
    p = row.progress or {}
    started = unix(row.started_at)
    step, total = int(p.get("step") or 0), int(p.get("total_steps") or 0)
    if row.status != "running" or started is None or step <= 0 or total <= step:
        return None
    now = time.time() if now is None else now
    return int(now + (now - started) * (total - step) / step)
