"""Running one claimed compression job (a fine-tune jobs row of kind "compression").

The same machinery as a fine-tune (workers/finetune/job.py): the row is the source of truth, the
lease is renewed between the child's messages (a cancelled job's lease is lost and its child
closed), events and step metrics are recorded, the result is registered as a new version with
lineage and the per-example results file is written. The model work runs in a fenced child
(workers/finetune/compress_child.py). A compression has no checkpoints: a job taken over after
its trainer died starts again from its parent.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from model_store.db import FineTuneJobRow
from model_store.registry import ResolvedVersion
from workers.contract.compress_messages import COMPRESS_MESSAGE, Compressed
from workers.contract.compress_spec import CompressSpec
from workers.contract.finetune_check import file_ref, readable_paths, version_ref
from workers.contract.finetune_messages import Error, Step
from workers.finetune.compress_promote import promote
from workers.finetune.fence import TrainingFailed, TrainingProcess
from workers.finetune.job import (
    JobContext,
    _Heartbeat,
    _results_file,
    _table,
    finish_with_version,
    lineage_file,
    register_result,
)

# what the fenced child runs; tests may swap in variants
COMPRESS_TARGET = "workers.finetune.compress_child:compress_main"


def compress_args(ctx: JobContext, row: FineTuneJobRow, spec: CompressSpec) -> dict[str, Any]:
    """The job as the fenced child sees it: its files (read-only), never the database."""
    base = ctx.registry.by_version_id(row.base_version_id)
    files = {
        key: file_ref(ctx.blobs, ctx.store.get_file(row.tenant_id, fid)) if fid else None
        for key, fid in (("train", row.training_file), ("valid", row.validation_file))
    }
    student = None
    if spec.student_version_id is not None:
        student = version_ref(ctx.blobs, ctx.registry.by_version_id(spec.student_version_id))
    return {
        "v": 1,
        "spec": row.spec,
        "seed": row.seed,
        "base": version_ref(ctx.blobs, base),
        **files,
        "student": student,
    }


def execute_compression(ctx: JobContext, job_id: str) -> None:
    row = ctx.store.job_by_id(job_id)
    assert row is not None
    spec = CompressSpec.model_validate(row.spec)
    args = compress_args(ctx, row, spec)
    read = readable_paths(args) + ([Path(args["student"]["path"])] if args["student"] else [])
    beat = _Heartbeat(ctx, job_id)
    ctx.store.add_event(job_id, f"compression started: {spec.method}", method=spec.method, **spec.params)
    with TrainingProcess(args, read, ctx.limits, target=COMPRESS_TARGET, messages=COMPRESS_MESSAGE) as proc:
        while True:
            got = proc.next(ctx.renew_interval_s)
            if got is not None:
                msg, buffers = got
                if isinstance(msg, Error):
                    raise TrainingFailed(msg.code, msg.message)
                if isinstance(msg, Compressed):
                    _finish(ctx, row, spec, proc, msg, buffers)
                    return
                if isinstance(msg, Step):
                    beat.progress = dict(msg.row)
            beat()


def _finish(
    ctx: JobContext,
    row: FineTuneJobRow,
    spec: CompressSpec,
    proc: TrainingProcess,
    msg: Compressed,
    buffers: list[bytes],
) -> None:
    base = ctx.registry.by_version_id(row.base_version_id)
    table = _table(buffers)
    files = [_results_file(ctx, row, table)] if table["lines"] else []
    lineage = _lineage(ctx, row, spec, base, msg)
    version = register_result(
        ctx, row, spec.publish_existing, (base, proc), msg, lineage, f"{spec.method} of {row.model}"
    )
    result: dict[str, Any] = {
        "version": version,
        "comparison": msg.comparison,
        "metrics": dict(msg.metrics),
        "result_files": files,
    }
    ctx.store.add_event(row.id, "comparison with the parent", "info", **msg.comparison)
    if spec.promote:
        result["promotion"] = promote(ctx, row, spec, version, msg)
        result["promoted"] = result["promotion"]["promoted"]
        ctx.store.add_event(row.id, result["promotion"]["reason"])
    name = f"{row.target_model}:{version}"
    finish_with_version(ctx, row.id, name, result, f"compressed model {name} ({msg.format}) is ready")


def _lineage(
    ctx: JobContext, row: FineTuneJobRow, spec: CompressSpec, base: ResolvedVersion, msg: Compressed
) -> dict[str, Any]:
    student = None
    if spec.student_version_id is not None:
        s = ctx.registry.by_version_id(spec.student_version_id)
        student = {"model": s.model, "version": s.version, "sha256": s.sha256}
    return {
        "job_id": row.id,
        "kind": "compression",
        "method": spec.method,
        "parameters": spec.params,
        "parent": {
            "model": base.model,
            "version": base.version,
            "sha256": base.sha256,
            "format": base.format,
        },
        "student": student,
        "base_grants": ctx.registry.base_grants(base.version_id, row.tenant_id),
        "training_file": lineage_file(ctx, row.tenant_id, row.training_file),
        "validation_file": row.validation_file,
        "seed": row.seed,
        "comparison": json.loads(json.dumps(msg.comparison)),
        "trainer_host": socket.gethostname(),
        "trainer_pid": os.getpid(),
    }
