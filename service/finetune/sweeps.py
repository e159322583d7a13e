"""Hyperparameter sweeps on the gateway side: creation (everything a job checks, plus the search
spec), reading, cancel and promote. The trainers advance sweeps (workers/finetune/sweep.py); the
gateway only writes the sweep row and says "look at sweep X" on the job stream.
"""

from __future__ import annotations

import secrets

from starlette.concurrency import run_in_threadpool

from model_store.db import FineTuneJobRow, SweepRow
from model_store.jobs import new_id, unix
from model_store.sweeps import SweepStore
from service.errors import Unprocessable
from service.finetune.create_once import create_once
from service.finetune.jobs import FinetuneService, _needs_model_check
from service.finetune.records import dispatch
from service.finetune.schemas import JobCreate
from service.finetune.sweep_schemas import SweepCreate, SweepList, SweepPublic, TrialPublic
from service.tenancy.api_keys import Principal
from workers.contract.finetune_spec import JobSpec
from workers.contract.sweep_spec import SWEEP_PREFIX, SweepSpec, check_space

_JOB_FIELDS = (
    "model",
    "training_file",
    "validation_file",
    "validation_split",
    "task",
    "target_model",
    "seed",
    "hyperparameters",
)


class SweepService:
    def __init__(self, finetune: FinetuneService) -> None:
        self.ft = finetune
        self.sweeps = SweepStore(finetune.state.sessions)

    async def create(
        self, principal: Principal, body: SweepCreate, idempotency_key: str | None
    ) -> SweepPublic:
        spec = _spec(principal, body)  # the search spec first: cheap, and a 422 before any file is read
        tenant_id = principal.tenant_id
        return await create_once(
            self.ft.store,
            self.ft.state.engine,
            tenant_id,
            idempotency_key,
            b"sweep:" + body.model_dump_json().encode(),
            lambda idem: self._create_row(principal, body, spec, idem),
            lambda sweep_id: self.get(tenant_id, sweep_id),
            lambda row: sweep_public(row, []),
        )

    def _create_row(
        self, principal: Principal, body: SweepCreate, spec: SweepSpec, idem: tuple[int, str] | None
    ) -> SweepRow:
        job = JobCreate.model_validate(
            {
                **body.model_dump(include=set(_JOB_FIELDS)),
                "suffix": body.suffix or (None if body.target_model else "sweep"),
            }
        )
        prep = self.ft._prepare(principal, job)  # the datasets, the base model, access: as for a job
        if _needs_model_check(prep.base, job):
            self.ft._check_model(prep, job)
        row = SweepRow(
            id=new_id(SWEEP_PREFIX.rstrip("-")),
            tenant_id=principal.tenant_id,
            status="queued",
            model=body.model,
            base_version_id=prep.base.version_id,
            target_model=prep.target,
            training_file=body.training_file,
            validation_file=body.validation_file,
            spec=spec.model_copy(update={"validation_split": prep.split}).model_dump(mode="json"),
            seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        )
        self.sweeps.create(row, idem)
        return row

    async def get(self, tenant_id: int, sweep_id: str) -> SweepPublic:
        row, trials = await run_in_threadpool(self.sweeps.trials_of, tenant_id, sweep_id)
        return sweep_public(row, trials)

    async def list(self, tenant_id: int, after: str | None, limit: int) -> SweepList:
        rows, more = await run_in_threadpool(self.sweeps.page, tenant_id, after, limit)
        data = [await self.get(tenant_id, r.id) for r in rows]
        return SweepList(data=data, has_more=more)

    async def cancel(self, tenant_id: int, sweep_id: str) -> SweepPublic:
        await run_in_threadpool(self.sweeps.cancel, tenant_id, sweep_id)
        return await self.get(tenant_id, sweep_id)

    async def promote(self, tenant_id: int, sweep_id: str, alias: str) -> SweepPublic:
        """Ask for the best trial to be promoted to `alias` (a trainer compares and moves it)."""
        await run_in_threadpool(self.sweeps.request_promotion, tenant_id, sweep_id, alias)
        await dispatch(self.ft.state.engine, sweep_id)
        return await self.get(tenant_id, sweep_id)


def _spec(principal: Principal, body: SweepCreate) -> SweepSpec:
    spec = SweepSpec(
        task=body.task,
        hyperparameters=body.hyperparameters,
        search=body.search,
        space=body.space,
        early_termination=body.early_termination,
        validation_split=body.validation_split,
        promote=body.promote,
        metadata=body.metadata,
        publish_existing=principal.has("manage"),
    )
    try:
        return check_space(spec)
    except ValueError as exc:
        raise Unprocessable(str(exc)) from exc


def _trial(spec: SweepSpec, job: FineTuneJobRow) -> TrialPublic:
    hp = JobSpec.model_validate(job.spec).hyperparameters.model_dump(mode="json")
    value = (job.result or {}).get("metrics", {}).get(spec.metric) if job.status == "succeeded" else None
    pruned = job.status == "cancelled" and (job.error or {}).get("code") == "pruned"
    return TrialPublic(
        number=job.sweep_trial or 0,
        job_id=job.id,
        status="pruned" if pruned else job.status,
        hyperparameters={k: hp.get(k) for k in spec.space},
        value=value,
        fine_tuned_model=job.fine_tuned_model,
    )


def sweep_public(row: SweepRow, trials: list[FineTuneJobRow]) -> SweepPublic:
    spec = SweepSpec.model_validate(row.spec)
    result = row.result or {}
    return SweepPublic(
        id=row.id,
        created_at=unix(row.created_at) or 0,
        finished_at=unix(row.finished_at),
        status=row.status,
        model=row.model,
        target_model=row.target_model,
        task=spec.task,
        training_file=row.training_file,
        validation_file=row.validation_file,
        validation_split=spec.validation_split,
        seed=row.seed,
        hyperparameters=spec.hyperparameters.model_dump(mode="json"),
        search=spec.search.model_dump(mode="json"),
        space={k: v.model_dump(mode="json") for k, v in spec.space.items()},
        early_termination=spec.early_termination.model_dump(mode="json") if spec.early_termination else None,
        promote=spec.promote,
        metadata=spec.metadata,
        trials=[_trial(spec, j) for j in trials],
        best_trial=result.get("best_trial"),
        fine_tuned_model=result.get("fine_tuned_model"),
        promotion=result.get("promotion"),
        error=row.error,
    )
