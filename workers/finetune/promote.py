"""`promote`: move an alias to a fine-tune's result only if it beats what the alias serves now.

The comparison is on the job's own validation data, with the job's `promote_metric` (by default
accuracy for classification, R² for regression, validation loss for language models). The
version the alias points at is loaded and evaluated in a fenced child (workers/finetune/fence.py),
never in the trainer; when it cannot be evaluated on that data (a format the trainer does not
run, another signature), nothing moves and the result says why. With the alias unset, the
baseline is the parent the job started from. The move is a compare-and-set: if the alias moved
while the job was comparing, it is left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from model_store.errors import NotFound
from model_store.registry import ResolvedVersion
from model_store.signature import Signature
from workers.contract.datasets import Dataset
from workers.contract.finetune_spec import JobSpec, chosen_metric
from workers.finetune.build import build
from workers.finetune.scores import is_better
from workers.finetune.training import evaluate, to_tensors

EVALUATED_FORMATS = ("torchscript", "hf-encoder")


class NotComparable(Exception):
    """The alias's version cannot be evaluated on the job's validation data."""


@dataclass(slots=True)
class Candidate:
    """The fine-tune result: where it lives, its signature and format, its final metrics."""

    tenant_id: int
    model: str
    version: int
    format: str
    sig: Signature
    metrics: dict[str, Any]


def current_version(registry: Any, tenant_id: int, model: str, alias: str) -> ResolvedVersion | None:
    try:
        model_row = registry.get_model(tenant_id, model)
    except NotFound:
        return None
    if alias not in registry.aliases(model_row.id):
        return None
    resolved: ResolvedVersion = registry.resolve(tenant_id, model, alias)
    return resolved


def check_comparable(current: ResolvedVersion, cand: Candidate) -> None:
    """NotComparable unless `current` can be scored on the data the result was scored on."""
    if current.format not in EVALUATED_FORMATS:
        raise NotComparable(f"{current.format} versions cannot be evaluated by the trainer")
    if current.format != cand.format:
        raise NotComparable(f"it is a {current.format} version, the result is {cand.format}")
    if current.signature != cand.sig:
        raise NotComparable(
            "its signature differs from the result's, so it cannot be scored on the same data"
        )


def evaluate_loaded(
    current: ResolvedVersion, data: bytes, spec: JobSpec, valid: Dataset, device: torch.device
) -> dict[str, Any]:
    """The validation metrics of `current` on the job's validation data, loaded like a parent.
    Runs model code: called only inside the fenced child (workers/finetune/child.py: evaluate_main)."""
    plain = spec.model_copy(
        update={"hyperparameters": spec.hyperparameters.model_copy(update={"num_classes": None})}
    )
    built = build(current, data, plain, [valid], device, 0)
    classification = spec.task == "classification"
    x, y = to_tensors(valid, built.sig, classification, device, built.encode)
    return evaluate(built.module, built.sig, x, y, classification)


def decide(
    ctx: Any,
    cand: Candidate,
    spec: JobSpec,
    parent: tuple[ResolvedVersion, dict[str, Any]],
    evaluate_version: Callable[[ResolvedVersion], dict[str, Any]],
) -> dict[str, Any]:
    """Compare, move the alias if the result is better, and say what was compared.
    `evaluate_version` scores a version on the job's validation data (in a fenced child)."""
    alias = spec.promote
    assert alias is not None
    metric = chosen_metric(spec.task, spec.promote_metric)
    out: dict[str, Any] = {"alias": alias, "model": cand.model, "metric": metric, "promoted": False}
    out["result_value"] = cand.metrics.get(metric)
    current = current_version(ctx.registry, cand.tenant_id, cand.model, alias)
    base, parent_metrics = parent
    if current is None:
        baseline, against = parent_metrics, {"model": base.model, "version": base.version, "source": "parent"}
    elif current.version == cand.version and current.model == cand.model:
        return {**out, "promoted": True, "reason": "the alias already serves this result"}
    else:
        against = {"model": current.model, "version": current.version, "source": "alias"}
        try:
            check_comparable(current, cand)
            baseline = evaluate_version(current)
        except NotComparable as e:
            return {
                **out,
                "against": against,
                "reason": f"not promoted: {alias} serves "
                f"{current.model}:{current.version}, which cannot be compared: {e}",
            }
        except Exception as e:  # a version that fails to load or run is no reason to move blindly
            return {
                **out,
                "against": against,
                "reason": f"not promoted: evaluating "
                f"{current.model}:{current.version} failed: {type(e).__name__}",
            }
    out.update(against=against, against_value=baseline.get(metric))
    if not is_better(metric, cand.metrics, baseline):
        return {
            **out,
            "reason": f"not promoted: {metric} {_fmt(cand.metrics.get(metric))} does not beat "
            f"{_fmt(baseline.get(metric))} of {against['model']}:{against['version']}",
        }
    expect = None if current is None else current.version
    if not ctx.registry.set_alias(cand.tenant_id, cand.model, alias, cand.version, expect=expect):
        return {**out, "reason": "not promoted: the alias moved while the result was being compared"}
    return {
        **out,
        "promoted": True,
        "reason": f"{metric} {_fmt(cand.metrics.get(metric))} beats "
        f"{_fmt(baseline.get(metric))} of {against['model']}:{against['version']}",
    }


def _fmt(value: Any) -> str:
    return "(none)" if value is None else f"{value:.6g}"
