"""Fine-tuning on the gateway side: dataset upload and job creation (validation, dry run,
idempotency). Routes call this; reading and job actions are in records.py, the public shapes in
public.py; the trainer (workers/) runs the jobs.

Everything a job needs is checked before anything queues: the base model (TorchScript, or an
hf-encoder trained on text rows with a linear head; ONNX is inference-only), the files (this
tenant's, parsed again), the data against the model's signature and the task. A bad dataset
answers 422 with a line-numbered report.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, Literal

from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from model_store.db import FileRow, FineTuneJobRow
from model_store.jobs import JobStore, new_id
from model_store.names import check_model_name, parse_version_ref
from model_store.registry import ResolvedVersion
from service.checks import finetune_check
from service.errors import InvalidDataset, Unprocessable
from service.finetune.create_once import create_once
from service.finetune.public import file_public, job_public
from service.finetune.records import FinetuneRecords
from service.finetune.schemas import (
    DryRunPublic,
    FilePublic,
    JobCreate,
    JobPublic,
    task_for,
)
from service.state import AppState
from service.tenancy import access
from service.tenancy.api_keys import Principal
from workers.contract.datasets import Dataset, Report, check_against, detect_format, label_set, parse
from workers.contract.finetune_check import CheckFailed, FenceLimits, file_ref, version_ref
from workers.contract.finetune_spec import DEFAULT_VALIDATION_SPLIT, JobSpec, LoraSpec

PURPOSE = "fine-tune"
_CHUNK = 1 << 20


@dataclass(slots=True)
class Prepared:
    base: ResolvedVersion
    target: str
    train_rows: int
    valid_rows: int
    split: float | None
    tenant_id: int = 0


class FinetuneService:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.store = JobStore(state.sessions)
        self.limits = FenceLimits.from_settings(state.settings)
        self.records = FinetuneRecords(self.store, state.blobs, state.engine)

    # files ---------------------------------------------------------------------------------------
    async def upload(self, tenant_id: int, upload: UploadFile, purpose: str) -> FilePublic:
        if purpose != PURPOSE:
            raise Unprocessable(f"purpose must be {PURPOSE!r}", param="purpose")
        limit = self.state.settings.max_dataset_bytes
        tmp, sha, size = await self.state.blobs.receive(_chunks(upload), limit)
        try:
            data = tmp.read_bytes()
            fmt = detect_format(upload.filename or "", data)
            _ds, report = await run_in_threadpool(parse, data, fmt)
            if not report.valid:
                raise InvalidDataset(f"dataset is invalid: {report.summary()}", report.as_dict(), "file")
            self.state.blobs.commit(tmp, sha)
        finally:
            tmp.unlink(missing_ok=True)
        row = FileRow(
            id=new_id("file"),
            tenant_id=tenant_id,
            filename=(upload.filename or "data")[:256],
            purpose=purpose,
            format=fmt,
            sha256=sha,
            size_bytes=size,
            stats=report.stats,
        )
        await run_in_threadpool(self.store.add_file, row)
        return file_public(row)

    # jobs ----------------------------------------------------------------------------------------
    async def create(
        self, principal: Principal, body: JobCreate, idempotency_key: str | None, dry_run: bool
    ) -> JobPublic | DryRunPublic:
        tenant_id = principal.tenant_id
        if dry_run:
            return await run_in_threadpool(self._dry_run, principal, body)

        async def existing(job_id: str) -> JobPublic:
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
        self, principal: Principal, body: JobCreate, idem: tuple[int, str] | None
    ) -> FineTuneJobRow:
        prep = self._prepare(principal, body)
        if _needs_model_check(prep.base, body):
            self._check_model(prep, body)
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        spec = JobSpec(
            task=body.task or "classification",
            hyperparameters=body.hyperparameters,
            validation_split=prep.split,
            promote=body.promote,
            promote_metric=body.promote_metric,
            keep_checkpoints=body.keep_checkpoints,
            metadata=body.metadata,
            resources=body.resources,
            publish_existing=principal.has("manage"),
        )
        row = FineTuneJobRow(
            id=new_id("ftjob"),
            tenant_id=principal.tenant_id,
            status="queued",
            model=body.model,
            base_version_id=prep.base.version_id,
            target_model=prep.target,
            training_file=body.training_file,
            validation_file=body.validation_file,
            spec=spec.model_dump(mode="json"),
            seed=seed,
            attempts=0,
        )
        events = [
            f"validating files: {prep.train_rows} training rows, {prep.valid_rows} validation rows",
            "files validated; job queued",
        ]
        self.store.create_job(row, events, idem)
        return row

    def _prepare(self, principal: Principal, body: JobCreate) -> Prepared:
        tenant_id = principal.tenant_id
        base = self._base(tenant_id, body.model)
        try:
            body.task = task_for(body, base.format)
        except ValueError as exc:
            raise Unprocessable(str(exc)) from exc
        if body.task == "causal-lm" and body.hyperparameters.lora is None:
            body.hyperparameters.lora = LoraSpec()  # a causal LM is fine-tuned with LoRA only
        target = body.target_model or f"{base.model}-{body.suffix or 'ft'}"
        check_model_name(target)
        access.check_finetune(principal, self.state.registry, body.model, base, target)
        train = self._dataset(tenant_id, body.training_file)
        causal = base.format == "hf-causal-lm"  # chat rows; no signature or label to check
        in_shape, out_shape = ((), ()) if causal else _shapes(base, body)
        reports: dict[str, dict[str, Any]] = {}
        cap = self.state.settings.max_classes
        report = check_against(
            train,
            in_shape,
            out_shape,
            _tabular(body),
            text_model=_is_text(base),
            max_classes=cap,
            causal_lm=causal,
        )
        if not report.valid:
            reports["training_file"] = report.as_dict()
        shapes = (in_shape, out_shape, _is_text(base), causal)
        valid_rows, split = self._validation(tenant_id, body, train, shapes, reports)
        if reports:
            first = next(iter(reports))
            raise InvalidDataset(f"{first}: {_summary(reports[first])}", reports, first)
        n_train = len(train) - (valid_rows if split else 0)
        return Prepared(base, target, n_train, valid_rows, split, tenant_id)

    def _validation(
        self,
        tenant_id: int,
        body: JobCreate,
        train: Dataset,
        shapes: tuple[tuple[int, ...], tuple[int, ...], bool, bool],
        reports: dict[str, dict[str, Any]],
    ) -> tuple[int, float | None]:
        in_shape, out_shape, text, causal = shapes
        if body.validation_file:
            valid = self._dataset(tenant_id, body.validation_file)
            known = label_set(train) if body.task == "classification" else None
            cap = self.state.settings.max_classes
            report = check_against(
                valid,
                in_shape,
                out_shape,
                _tabular(body),
                known,
                text_model=text,
                max_classes=cap,
                causal_lm=causal,
            )
            if not report.valid:
                reports["validation_file"] = report.as_dict()
            return len(valid), None
        split = body.validation_split or DEFAULT_VALIDATION_SPLIT
        n_valid = max(1, round(len(train) * split))
        if n_valid >= len(train):
            reports["training_file"] = Report(stats={"rows": len(train)}).as_dict() | {
                "valid": False,
                "errors": [
                    {"line": 0, "field": "", "message": "too few rows to hold out a validation split"}
                ],
            }
        return n_valid, split

    def _base(self, tenant_id: int, ref: str) -> ResolvedVersion:
        name, _, version = ref.partition(":")
        parsed = parse_version_ref(version) if version else None
        base = self.state.registry.resolve(tenant_id, name, parsed)
        if base.format == "onnx":
            raise Unprocessable(
                "ONNX versions are inference-only and cannot be fine-tuned; upload the model as TorchScript",
                param="model",
            )
        if base.format in ("hf-encoder", "hf-causal-lm"):
            return base
        if base.format != "torchscript":
            raise Unprocessable(f"versions of format {base.format!r} cannot be fine-tuned", param="model")
        sig = base.signature
        if len(sig.inputs) != 1 or not sig.batched() or sig.inputs[0].datatype not in ("FP32", "FP64"):
            raise Unprocessable(
                "fine-tuning needs a model with one float input and a batch dimension", param="model"
            )
        return base

    def _dataset(self, tenant_id: int, file_id: str) -> Dataset:
        row = self.store.get_file(tenant_id, file_id)
        ds, report = parse(self.state.blobs.read_verified(row.sha256), row.format)
        if ds is None:
            raise InvalidDataset(f"{file_id}: {report.summary()}", {file_id: report.as_dict()})
        return ds

    def _check_model(self, prep: Prepared, body: JobCreate) -> dict[str, int]:
        """Build the base model as the job would, in a fenced child (never here): can the head be
        resized, does the freeze list leave something to train? Waits for the verdict only."""
        task = body.task or "classification"
        spec = JobSpec(task=task, hyperparameters=body.hyperparameters).model_dump(mode="json")
        args: dict[str, Any] = {
            "v": 1,
            "spec": spec,
            "base": version_ref(self.state.blobs, prep.base, convert=True),
        }
        limits = self.limits
        if _is_text(prep.base) or task == "causal-lm":  # a head as wide as the labels; tokens
            train = self.store.get_file(prep.tenant_id, body.training_file)
            args["train"] = file_ref(self.state.blobs, train)
        if task == "causal-lm":  # loads the LM, tokenises the file and times one step
            limits = replace(limits, check_timeout_s=max(limits.check_timeout_s, CAUSAL_CHECK_S))
        try:
            return finetune_check(self.state.settings.checks, self.state.checks, args, limits)
        except CheckFailed as exc:
            raise Unprocessable(str(exc)) from exc

    def _dry_run(self, principal: Principal, body: JobCreate) -> DryRunPublic:
        prep = self._prepare(principal, body)
        counts = self._check_model(prep, body)
        hp = body.hyperparameters
        steps = math.ceil(prep.train_rows / hp.batch_size)
        return DryRunPublic(
            model=prep.base.model,
            base_version=prep.base.version,
            target_model=prep.target,
            training={"rows": prep.train_rows, "file": body.training_file},
            validation={"rows": prep.valid_rows, "file": body.validation_file, "split": prep.split},
            estimate={
                "steps_per_epoch": steps,
                "total_steps": steps * hp.epochs,
                **counts,
                "examples_seen": prep.train_rows * hp.epochs,
                **_token_estimate(counts, prep, hp.epochs, steps * hp.epochs),
            },
        )


CAUSAL_CHECK_S = 600.0  # a causal LM's dry run: load (a GGUF is dequantised), tokenise, one step


def _token_estimate(counts: dict[str, int], prep: Prepared, epochs: int, total_steps: int) -> dict[str, Any]:
    """A causal LM's dry run: the file's tokens, the tokens training will see, and a time from the
    one measured step (the held-out share of a split file is not trained on)."""
    if "tokens" not in counts:
        return {}
    rows = prep.train_rows + (prep.valid_rows if prep.split else 0)
    train_share = prep.train_rows / max(1, rows)
    return {
        "trained_tokens": int(counts["tokens"] * train_share * epochs),
        "estimated_seconds": round(total_steps * counts.get("step_ms", 0) / 1000, 1),
    }


def _needs_model_check(base: ResolvedVersion, body: JobCreate) -> bool:
    """Whether creating the job must load the model: a TorchScript head to resize or a freeze list
    to apply; an hf-encoder always has a head, so only freeze prefixes need the model."""
    hp = body.hyperparameters
    if _is_text(base):
        return any(f != "backbone" for f in hp.freeze)
    return bool(hp.freeze) or hp.num_classes is not None


def _tabular(body: JobCreate) -> Literal["classification", "regression"]:
    return "regression" if body.task == "regression" else "classification"


def _is_text(base: ResolvedVersion) -> bool:
    return base.format == "hf-encoder"


def _shapes(base: ResolvedVersion, body: JobCreate) -> tuple[tuple[int, ...], tuple[int, ...]]:
    out = tuple(base.signature.outputs[0].shape[1:])
    if _is_text(base) and (base.signature.outputs[0].name == "embedding" or body.task == "regression"):
        out = (-1,)  # a new head, as wide as the labels need
    classes = body.hyperparameters.num_classes
    if classes is not None:
        if body.task != "classification" or len(out) != 1:
            raise Unprocessable("num_classes needs a classification task and a [batch, classes] output")
        if out[0] > 0 and classes < out[0]:
            raise Unprocessable(f"num_classes {classes} is fewer than the model's {out[0]} classes")
        out = (classes,)
    return tuple(base.signature.inputs[0].shape[1:]), out


def _summary(report: dict[str, Any]) -> str:
    parts = [
        f"line {e['line']}: {e['field'] + ': ' if e['field'] else ''}{e['message']}"
        for e in report.get("errors", [])[:5]
    ]
    return "; ".join(parts)


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(_CHUNK):
        yield chunk
