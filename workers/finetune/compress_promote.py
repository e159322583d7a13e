"""`promote` for a compression: move an alias of the result's model to the result only if its
validation accuracy beats what the alias serves now (workers/finetune/promote.py's rule and
compare-and-set), on the job's validation file. With the alias unset the bar is the parent's
accuracy from the job's comparison; a version the alias serves is scored in a fenced child; an
ONNX result or one of another signature is not comparable and nothing moves."""

from __future__ import annotations

from typing import Any

from model_store.db import FineTuneJobRow
from model_store.registry import ResolvedVersion
from model_store.signature import Signature
from workers.contract.compress_messages import Compressed
from workers.contract.compress_spec import CompressSpec
from workers.contract.finetune_check import evaluate_version, file_ref, readable_paths, version_ref
from workers.contract.finetune_spec import Hyperparameters, JobSpec
from workers.finetune.job import JobContext
from workers.finetune.promote import Candidate, decide


def promote(
    ctx: JobContext, row: FineTuneJobRow, spec: CompressSpec, version: int, msg: Compressed
) -> dict[str, Any]:
    """What `decide` found and did; the job's `result.promotion`."""
    assert spec.promote is not None and row.validation_file
    job_spec = JobSpec(task="classification", hyperparameters=Hyperparameters(), promote=spec.promote)
    parent_acc = msg.comparison.get("parent", {}).get("accuracy")
    result_acc = msg.comparison.get("result", {}).get("accuracy")
    if parent_acc is None or result_acc is None:
        return {"alias": spec.promote, "promoted": False, "reason": "not promoted: no accuracy to compare"}
    base = ctx.registry.by_version_id(row.base_version_id)
    sig = Signature.model_validate(msg.signature)
    cand = Candidate(row.tenant_id, row.target_model, version, msg.format, sig, {"accuracy": result_acc})
    valid = file_ref(ctx.blobs, ctx.store.get_file(row.tenant_id, row.validation_file))

    def evaluate(current: ResolvedVersion) -> dict[str, Any]:
        args = {
            "v": 1,
            "spec": job_spec.model_dump(mode="json"),
            "seed": row.seed,
            "base": version_ref(ctx.blobs, current),
            "train": valid,
            "valid": valid,
        }
        return evaluate_version(args, readable_paths(args), ctx.limits)

    return decide(ctx, cand, job_spec, (base, {"accuracy": parent_acc}), evaluate)
