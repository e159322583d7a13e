"""Compression jobs on the gateway side: creation (checks, idempotency), reading, cancel.

A compression job is a row of the fine-tune jobs table with kind "compression" (one lease, event,
cancel and dispatch machinery; a sibling table would have copied all of it); the trainer runs it in
a fenced child (workers/finetune/compress_*.py). What a method needs is checked before anything
queues: the parent's format, the files (this tenant's, parsed again, text or numbers as the model
takes), a distillation's student; the same access rule as a fine-tune (another tenant's model only
with its owner's fine-tune grant; a `finetune` key creates new models only).
"""

from __future__ import annotations

import secrets

from starlette.concurrency import run_in_threadpool

from model_store.db import FineTuneJobRow
from model_store.jobs import JobStore, new_id, unix
from model_store.names import check_model_name, parse_version_ref
from model_store.registry import ResolvedVersion
from service.compress.schemas import CompressionCreate, CompressionJobList, CompressionJobPublic
from service.errors import InvalidDataset, Unprocessable
from service.finetune.create_once import create_once
from service.finetune.public import event_public
from service.finetune.schemas import EventList
from service.state import AppState
from service.tenancy import access
from service.tenancy.api_keys import Principal
from workers.contract.compress_spec import KIND, CompressSpec
from workers.contract.datasets import CHAT_NEEDS_CAUSAL, parse

# method -> the parent formats it applies to
FORMATS = {
    "quantize": ("torchscript", "hf-encoder", "onnx"),
    "prune": ("torchscript", "hf-encoder"),
    "distill": ("torchscript", "hf-encoder"),
    "export": ("torchscript", "hf-encoder"),
}
CANCELLABLE = ("validating_files", "queued", "running", "paused")


def job_public(row: FineTuneJobRow) -> CompressionJobPublic:
    spec = CompressSpec.model_validate(row.spec)
    result = row.result or {}
    return CompressionJobPublic(
        id=row.id,
        created_at=unix(row.created_at) or 0,
        started_at=unix(row.started_at),
        finished_at=unix(row.finished_at),
        model=row.model,
        method=spec.method,
        parameters=spec.params,
        status=row.status,
        error=row.error,
        training_file=row.training_file or None,
        validation_file=row.validation_file,
        result_model=row.fine_tuned_model,
        comparison=result.get("comparison"),
        result_files=list(result.get("result_files", [])),
        seed=row.seed,
        metadata=spec.metadata,
        promote=spec.promote,
        progress=row.progress,
        result=row.result,
    )


class CompressService:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.store = JobStore(state.sessions, kind=KIND)

    async def create(
        self, principal: Principal, body: CompressionCreate, idempotency_key: str | None
    ) -> CompressionJobPublic:
        tenant_id = principal.tenant_id

        async def existing(job_id: str) -> CompressionJobPublic:
            return job_public(await run_in_threadpool(self.store.get_job, tenant_id, job_id))

        return await create_once(
            self.store,
            self.state.engine,
            tenant_id,
            idempotency_key,
            body.model_dump_json().encode(),
            lambda idem: self._create_row(principal, body, idem),
            existing,
            job_public,
        )

    def _create_row(
        self, principal: Principal, body: CompressionCreate, idem: tuple[int, str] | None
    ) -> FineTuneJobRow:
        base = self._version(principal, body.model)
        if base.format not in FORMATS[body.method]:
            raise Unprocessable(f"{body.method} does not apply to {base.format} versions")
        target = body.target_model or f"{base.model}-{body.suffix or body.method}"
        check_model_name(target)
        access.check_finetune(principal, self.state.registry, body.model, base, target)
        student_id = self._check_method(principal, body, base)
        for file_id in (body.training_file, body.validation_file):
            if file_id:
                self._check_file(principal.tenant_id, file_id, base.format == "hf-encoder")
        spec = CompressSpec(
            method=body.method,
            params=body.parameters,
            student_version_id=student_id,
            metadata=body.metadata,
            promote=body.promote,
            publish_existing=principal.has("manage"),
        )
        row = FineTuneJobRow(
            id=new_id("cmpjob"),
            kind=KIND,
            tenant_id=principal.tenant_id,
            status="queued",
            model=body.model,
            base_version_id=base.version_id,
            target_model=target,
            training_file=body.training_file or "",
            validation_file=body.validation_file,
            spec=spec.model_dump(mode="json"),
            seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
            attempts=0,
        )
        self.store.create_job(row, [f"{body.method} of {base.model}:{base.version} queued"], idem)
        return row

    def _version(self, principal: Principal, ref: str) -> ResolvedVersion:
        name, _, version = ref.partition(":")
        access.check_model(principal, name)
        parsed = parse_version_ref(version) if version else None
        return self.state.registry.resolve(principal.tenant_id, name, parsed)

    def _check_method(
        self, principal: Principal, body: CompressionCreate, base: ResolvedVersion
    ) -> int | None:
        """Method-specific checks; the student's version id for a distillation with a given one."""
        params = body.parameters
        if body.method == "quantize" and params.get("dtype") == "fp16" and base.format != "hf-encoder":
            raise Unprocessable("fp16 weights apply to hf-encoder versions; use dtype int8")
        if body.method != "distill":
            return None
        if base.signature.outputs[0].name != "logits":
            raise Unprocessable(
                "the teacher must be a classifier (a `logits` output): fine-tune a head first"
            )
        if params.get("student_layers") is not None:
            if base.format != "hf-encoder":
                raise Unprocessable("student_layers needs an hf-encoder teacher; give a student version")
            return None
        student = self._version(principal, str(params["student"]))
        if student.format not in FORMATS["distill"]:
            raise Unprocessable(f"a {student.format} student cannot be trained")
        if not self.state.registry.may_finetune(principal.tenant_id, student):
            raise Unprocessable(
                "the student is shared for inference only: its owner does not allow training it"
            )
        return student.version_id

    def _check_file(self, tenant_id: int, file_id: str, text_model: bool) -> None:
        row = self.store.get_file(tenant_id, file_id)
        ds, report = parse(self.state.blobs.read_verified(row.sha256), row.format)
        if ds is None:
            raise InvalidDataset(f"{file_id}: {report.summary()}", {file_id: report.as_dict()})
        if ds.is_chat:
            raise Unprocessable(f"{file_id}: {CHAT_NEEDS_CAUSAL}; compression takes text or numeric rows")
        if ds.is_text != text_model:
            kind = "text rows" if text_model else "numeric rows"
            raise Unprocessable(f"{file_id}: this model takes {kind}")

    # reading and cancel --------------------------------------------------------------------------
    async def list_jobs(self, tenant_id: int, after: str | None, limit: int) -> CompressionJobList:
        rows, more = await run_in_threadpool(self.store.list_jobs, tenant_id, after, limit)
        return CompressionJobList(data=[job_public(r) for r in rows], has_more=more)

    async def get_job(self, tenant_id: int, job_id: str) -> CompressionJobPublic:
        return job_public(await run_in_threadpool(self.store.get_job, tenant_id, job_id))

    async def cancel(self, tenant_id: int, job_id: str) -> CompressionJobPublic:
        row = await run_in_threadpool(
            self.store.transition, tenant_id, job_id, CANCELLABLE, "cancelled", "job cancelled"
        )
        return job_public(row)

    async def events(self, tenant_id: int, job_id: str, after: int, limit: int) -> EventList:
        rows, more = await run_in_threadpool(self.store.events, tenant_id, job_id, after, limit)
        return EventList(data=[event_public(r) for r in rows], has_more=more)
