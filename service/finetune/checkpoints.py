"""A checkpoint made a version: POST /v1/fine_tuning/jobs/{id}/checkpoints/{cid}/promote.

A checkpoint holds training state (weights, optimizer, RNG), not a servable artifact, so its
weights are put into the job's model as training built it and exported, in a fenced child
(workers/finetune/child.py: export_main), never in the gateway. The result is the next version of
the job's target model, with the job's lineage and the checkpoint's epoch and metrics; promoting
the same checkpoint again answers the version it made. The export runs in the gateway's own fenced
children only (KILN_CHECKS local, or auto where torch is installed): elsewhere, 503 saying so.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool

from model_store.db import CheckpointRow, FineTuneJobRow
from model_store.errors import CheckUnavailable, NotFound
from model_store.formats import ADAPTER_FORMAT
from model_store.jobs import JobStore
from model_store.signature import Signature
from service.checks import runs_locally
from service.errors import Unprocessable
from service.schemas import VersionPublic
from service.state import AppState
from service.tenancy.api_keys import Principal
from workers.contract.finetune_check import (
    CheckFailed,
    FenceLimits,
    export_checkpoint,
    file_ref,
    readable_paths,
    version_ref,
)


def _checkpoint(store: JobStore, job: FineTuneJobRow, ckpt_id: str) -> CheckpointRow:
    raw = ckpt_id.removeprefix("ftckpt-")
    found = [c for c in store.checkpoints(job.tenant_id, job.id) if raw.isdigit() and c.id == int(raw)]
    if not found:
        raise NotFound(f"checkpoint {ckpt_id!r} of job {job.id!r} not found")
    return found[0]


def _args(state: AppState, store: JobStore, job: FineTuneJobRow, ckpt: CheckpointRow) -> dict[str, Any]:
    base = state.registry.by_version_id(job.base_version_id)
    blobs = state.blobs
    return {
        "v": 1,
        "spec": job.spec,
        "seed": job.seed,
        "base": version_ref(blobs, base),
        "train": file_ref(blobs, store.get_file(job.tenant_id, job.training_file)),
        "valid": file_ref(blobs, store.get_file(job.tenant_id, job.validation_file))
        if job.validation_file
        else None,
        "checkpoint": {"path": str(blobs.path_for(ckpt.sha256).resolve()), "sha256": ckpt.sha256},
    }


def _lineage(
    state: AppState, job: FineTuneJobRow, ckpt: CheckpointRow, args: dict[str, Any]
) -> dict[str, Any]:
    base = args["base"]
    return {
        "job_id": job.id,
        "checkpoint": {
            "id": f"ftckpt-{ckpt.id}",
            "epoch": ckpt.epoch,
            "step_number": ckpt.step_number,
            "sha256": ckpt.sha256,
        },
        "parent": {"model": base["model"], "version": base["version"], "sha256": base["sha256"]},
        "base_grants": state.registry.base_grants(job.base_version_id, job.tenant_id),
        "training_file": {"id": job.training_file, "sha256": args["train"]["sha256"]},
        "validation_file": job.validation_file,
        "task": job.spec.get("task"),
        "hyperparameters": job.spec.get("hyperparameters"),
        "seed": job.seed,
        "epochs_completed": ckpt.epoch,
        "metrics": dict(ckpt.metrics),
    }


def _existing(state: AppState, job: FineTuneJobRow, ckpt: CheckpointRow) -> int | None:
    if not state.registry.has_model(job.tenant_id, job.target_model):
        return None
    model = state.registry.get_model(job.tenant_id, job.target_model)
    for v in state.registry.list_versions(model.id):
        made = (v.lineage or {}).get("checkpoint") or {}
        if (v.lineage or {}).get("job_id") == job.id and made.get("sha256") == ckpt.sha256:
            return v.version
    return None


def promote(state: AppState, store: JobStore, principal: Principal, job_id: str, ckpt_id: str) -> int:
    """The version number the checkpoint became (made now, or earlier)."""
    job = store.get_job(principal.tenant_id, job_id)
    ckpt = _checkpoint(store, job, ckpt_id)
    if (done := _existing(state, job, ckpt)) is not None:
        return done
    if not runs_locally(state.settings.checks, "finetune"):
        raise CheckUnavailable("exporting a checkpoint needs torch in this gateway's fenced children")
    try:
        args = _args(state, store, job, ckpt)
    except NotFound as exc:
        raise Unprocessable(f"the job's data is gone, so its model cannot be rebuilt: {exc}") from exc
    limits = FenceLimits.from_settings(state.settings)
    try:
        art = export_checkpoint(args, readable_paths(args), limits, state.blobs)
    except CheckFailed as exc:
        raise Unprocessable(str(exc)) from exc
    base = state.registry.by_version_id(job.base_version_id)
    row = state.registry.add_version(
        job.tenant_id,
        job.target_model,
        art.format,
        art.tmp,
        art.sha256,
        art.size,
        Signature.model_validate(art.signature),
        base.config,
        lineage=_lineage(state, job, ckpt, args)
        | ({"adapter_of": job.base_version_id} if art.format == ADAPTER_FORMAT else {}),
        create=f"fine-tuned from {job.model}",
    )
    return row.version


async def promote_checkpoint(
    state: AppState, store: JobStore, principal: Principal, job_id: str, ckpt_id: str
) -> VersionPublic:
    version = await run_in_threadpool(promote, state, store, principal, job_id, ckpt_id)
    job = await run_in_threadpool(store.get_job, principal.tenant_id, job_id)
    return await state.catalog.get_version(principal.tenant_id, job.target_model, version)
