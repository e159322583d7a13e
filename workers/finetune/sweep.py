"""The sweep advancer: runs in every trainer, on a dispatch of the sweep, after each trial a
trainer finishes, and on every reconcile.

One advance reads the sweep and its trials from the database and does the one thing due: prune a
trial the median rule gives up on, create the next trials (ordinary fine-tune jobs with
`sweep_id`, up to `parallel` at once, until `max_trials`), finish the sweep once every trial has
(its best trial by the sweep's metric is its result), or promote that best trial with the
fine-tune promote rules (never onto a model better than the one the alias serves). Advancers in
several trainers may race: trial numbers are unique per sweep, so a race makes one job, and
everything else is a compare-and-set on the sweep row.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError

from model_store.db import FineTuneJobRow, SweepRow
from model_store.errors import NotFound
from model_store.jobs import TERMINAL, new_id
from model_store.sweeps import SWEEP_ACTIVE, SweepStore, last_epoch
from workers.contract.finetune_spec import Hyperparameters, JobSpec
from workers.contract.sweep_spec import SweepSpec
from workers.finetune.job import JobContext, evaluate_in_fence
from workers.finetune.promote import Candidate, decide
from workers.finetune.sweep_search import TrialView, best, should_prune, suggest

log = logging.getLogger("kiln.trainer")
_INFRA = (RedisError, OperationalError, OSError)


class SweepAdvancer:
    def __init__(self, ctx: JobContext, enqueue: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.sweeps = SweepStore(ctx.store.sessions)
        self.enqueue = enqueue

    def advance_all(self, promote: bool = True) -> None:
        for sweep_id in self.sweeps.pending_ids():
            self.advance(sweep_id, promote)

    def loop(self, stopping: threading.Event, interval_s: float) -> None:
        """The trainer's sweep thread: every interval, advance every sweep but for promotion
        (which evaluates in a fenced child: the trainer's main loop does that)."""
        while not stopping.wait(interval_s):
            try:
                self.advance_all(promote=False)
            except _INFRA as exc:
                log.warning("sweeps: queue or database unavailable (%s); retrying", type(exc).__name__)

    def after_job(self, job_id: str) -> None:
        row = self.ctx.store.job_by_id(job_id)
        if row is not None and row.sweep_id is not None:
            self.advance(row.sweep_id)

    def advance(self, sweep_id: str, promote: bool = True) -> None:
        """Never raises but for the database or queue being away (the trainer's retry loop
        handles those): a sweep that cannot advance is logged and left for the next try."""
        try:
            self._advance(sweep_id, promote)
        except _INFRA:
            raise
        except Exception:
            log.exception("sweep %s: could not advance", sweep_id)

    def _advance(self, sweep_id: str, promote: bool) -> None:
        loaded = self.sweeps.load(sweep_id)
        if loaded is None:
            return
        row, jobs = loaded
        spec = SweepSpec.model_validate(row.spec)
        if row.status == "succeeded":
            if promote:
                self._promote(row, spec, jobs)
            return
        if row.status not in SWEEP_ACTIVE:
            return
        views = [self._view(spec, j) for j in jobs]
        if spec.early_termination is not None and self._prune(spec, views, jobs):
            row, jobs = self.sweeps.load(sweep_id) or (row, jobs)
            views = [self._view(spec, j) for j in jobs]
        active = sum(1 for v in views if v.state not in (*TERMINAL, "pruned"))
        room = min(spec.search.parallel - active, spec.max_trials - len(views))
        if room > 0:
            self._create(row, spec, views, room)
        elif len(views) >= spec.max_trials and active == 0:
            self._finish(row, spec, views, jobs)
            reloaded = self.sweeps.load(sweep_id)
            if promote and reloaded is not None and reloaded[0].status == "succeeded":
                self._promote(reloaded[0], spec, reloaded[1])

    # trials --------------------------------------------------------------------------------------
    def _view(self, spec: SweepSpec, job: FineTuneJobRow) -> TrialView:
        hp = job.spec.get("hyperparameters", {})
        params = {k: hp.get(k) for k in spec.space}
        pruned = job.status == "cancelled" and (job.error or {}).get("code") == "pruned"
        value = (job.result or {}).get("metrics", {}).get(spec.metric) if job.status == "succeeded" else None
        by_epoch: dict[int, float] = {}
        valid: list[tuple[int, dict[str, Any]]] = []
        if spec.early_termination is not None:
            valid = [
                (m.epoch, m.values)
                for m in self.ctx.store.metrics(job.tenant_id, job.id)
                if m.kind == "valid"
            ]
            for epoch, values in valid:
                v = values.get(spec.metric)
                if isinstance(v, int | float):
                    by_epoch[epoch] = float(v)
        state = "pruned" if pruned else job.status
        return TrialView(job.sweep_trial or 0, params, state, value, by_epoch, last_epoch(job.spec, valid))

    def _create(self, row: SweepRow, spec: SweepSpec, views: list[TrialView], room: int) -> None:
        jobs: list[FineTuneJobRow] = []
        views = list(views)
        for _ in range(room):
            number = len(views)
            params = suggest(spec, row.seed, number, views)
            jobs.append(_child(row, spec, number, params))
            views.append(TrialView(number, params, "queued"))
        if not self.sweeps.add_trials(row.id, jobs):
            log.info("sweep %s: trials made by another trainer meanwhile (or the sweep ended)", row.id)
            return
        for job in jobs:
            log.info("sweep %s: trial %s queued as %s", row.id, job.sweep_trial, job.id)
            self.enqueue(job.id)

    def _prune(self, spec: SweepSpec, views: list[TrialView], jobs: list[FineTuneJobRow]) -> bool:
        pruned = False
        for view, job in zip(views, jobs, strict=True):
            if view.state != "running" or not should_prune(spec, views, view):
                continue
            epoch = max(view.by_epoch)
            of = f" of {view.last_epoch}" if view.last_epoch else ""
            message = (
                f"pruned by the sweep: {spec.metric} {view.by_epoch[epoch]:.6g} after epoch {epoch}{of} "
                "is worse than the median of the finished trials"
            )
            pruned |= self.sweeps.prune(job.id, message, {"epoch": epoch, spec.metric: view.by_epoch[epoch]})
        return pruned

    # the end -------------------------------------------------------------------------------------
    def _finish(
        self, row: SweepRow, spec: SweepSpec, views: list[TrialView], jobs: list[FineTuneJobRow]
    ) -> None:
        top = best(spec, views)
        counts: dict[str, int] = {}
        for v in views:
            counts[v.state] = counts.get(v.state, 0) + 1
        if top is None:
            error = {"code": "no_trial_succeeded", "message": f"none of the {len(views)} trials succeeded"}
            self.sweeps.finish(row.id, "failed", {"trials": counts}, error)
            return
        job = jobs[[v.number for v in views].index(top.number)]
        best_trial = {
            "number": top.number,
            "job_id": job.id,
            "fine_tuned_model": job.fine_tuned_model,
            "hyperparameters": top.params,
            "metric": spec.metric,
            "value": top.value,
            "metrics": (job.result or {}).get("metrics", {}),
        }
        result = {"best_trial": best_trial, "trials": counts, "fine_tuned_model": job.fine_tuned_model}
        if self.sweeps.finish(row.id, "succeeded", result, None):
            log.info("sweep %s: succeeded; best trial %s (%s %s)", row.id, top.number, spec.metric, top.value)

    def _promote(self, row: SweepRow, spec: SweepSpec, jobs: list[FineTuneJobRow]) -> None:
        """Promote the best trial's version with the fine-tune promote rules."""
        result = row.result or {}
        best_trial = result.get("best_trial")
        if not spec.promote or "promotion" in result or not best_trial:
            return
        job = next((j for j in jobs if j.id == best_trial["job_id"]), None)
        if job is None or not job.result:
            return
        version = int(job.result["version"])
        try:
            resolved = self.ctx.registry.resolve(row.tenant_id, job.target_model, version)
        except NotFound:
            reason = f"not promoted: {job.target_model}:{version} no longer exists"
            self.sweeps.set_promotion(row.id, {"promoted": False, "alias": spec.promote, "reason": reason})
            return
        cand = Candidate(
            row.tenant_id,
            job.target_model,
            version,
            resolved.format,
            resolved.signature,
            job.result["metrics"],
        )
        job_spec = JobSpec.model_validate(job.spec).model_copy(update={"promote": spec.promote})
        base = self.ctx.registry.by_version_id(job.base_version_id)
        evaluate = functools.partial(evaluate_in_fence, self.ctx, job)
        promotion = decide(self.ctx, cand, job_spec, (base, job.result.get("parent_metrics", {})), evaluate)
        promotion["trial"] = best_trial["number"]
        self.sweeps.set_promotion(row.id, promotion)
        log.info("sweep %s: %s", row.id, promotion["reason"])


def _child(row: SweepRow, spec: SweepSpec, number: int, params: dict[str, Any]) -> FineTuneJobRow:
    hp = Hyperparameters.model_validate({**spec.hyperparameters.model_dump(mode="json"), **params})
    job_spec = JobSpec(
        task=spec.task,
        hyperparameters=hp,
        validation_split=spec.validation_split,
        promote=None,
        metadata=dict(spec.metadata),
        publish_existing=spec.publish_existing,
    )
    return FineTuneJobRow(
        id=new_id("ftjob"),
        tenant_id=row.tenant_id,
        status="queued",
        model=row.model,
        base_version_id=row.base_version_id,
        target_model=row.target_model,
        training_file=row.training_file,
        validation_file=row.validation_file,
        spec=job_spec.model_dump(mode="json"),
        seed=row.seed,
        attempts=0,
        sweep_id=row.id,
        sweep_trial=number,
    )
