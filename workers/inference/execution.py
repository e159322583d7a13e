"""Running one batch of a version: items whose deadline passed while queued are answered at
once, the rest run as one batch on the calling thread's instance; a failed batch is split
(halves after out-of-memory, else each item alone) so that one bad item fails alone; a model
that does not answer by the batch's deadline, or whose process dies, fails the batch and its
version is condemned. Outputs are checked and split into one reply per request.

Everything a batch produces (replies, usage charges) is returned with it: batches of one
version run at the same time on its instances, so nothing passes through shared state."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from model_store.errors import public_message
from model_store.fence import FenceDied, FenceTimeout
from workers.contract.messages import ErrorCode, InferReplyMsg, TensorMeta
from workers.contract.tensors import to_bytes
from workers.contract.usage import Charge
from workers.inference.batcher import Item
from workers.inference.charging import charge_batch, request_of
from workers.inference.fenced import MARGIN_S, deadline_scope, fenced_of
from workers.inference.metrics import WorkerMetrics
from workers.inference.model_cache import Loaded
from workers.inference.runtime import PROMPT_TOKENS, InputRejected, run_adapter, split_failed
from workers.inference.validation import Reply, now_ms
from workers.inference.watchdog import Watchdog

log = logging.getLogger("kiln.worker")


@dataclass(slots=True)
class BatchResult:
    replies: list[Reply] = field(default_factory=list)
    charges: list[Charge] = field(default_factory=list)

    def add(self, other: BatchResult) -> None:
        self.replies.extend(other.replies)
        self.charges.extend(other.charges)


class Executor:
    """`condemn(loaded, why)`: the version's model hung or died; `why_condemned(version_id)`:
    whether it already was (its queued batches then fail without running), and why."""

    def __init__(
        self,
        worker_id: str,
        metrics: WorkerMetrics,
        watchdog: Watchdog,
        condemn: Callable[[Loaded, str], None],
        why_condemned: Callable[[int], str | None],
    ) -> None:
        self.worker_id = worker_id
        self.metrics = metrics
        self.watchdog = watchdog
        self._condemn = condemn
        self._why_condemned = why_condemned

    def execute(self, loaded: Loaded, items: list[Item]) -> BatchResult:
        loaded.last_used = time.monotonic()
        now = time.monotonic()
        expired = [item for item in items if item.deadline <= now]
        live = [item for item in items if item.deadline > now]
        result = BatchResult(self.fail(expired, ErrorCode.DEADLINE_EXCEEDED, "deadline passed while queued"))
        why = self._why_condemned(loaded.version.version_id) if live else None
        if why is not None:
            result.replies.extend(
                self.fail(live, ErrorCode.UNAVAILABLE, f"this model version was unloaded: {why}")
            )
        elif live:
            result.add(self._run_group(loaded, live))
        return result

    def fail(self, items: list[Item], code: str, message: str) -> list[Reply]:
        return [
            (
                request_of(i).reply_to,
                InferReplyMsg.failure(request_of(i).request_id, code, message, self.worker_id),
            )
            for i in items
        ]

    def _run_group(self, loaded: Loaded, items: list[Item]) -> BatchResult:
        """Run items as one batch; if it fails, split it (halves after out-of-memory, else each
        item alone) so that one bad item fails alone. A model that does not answer by the
        batch's deadline, or whose process dies, fails the batch and is unloaded."""
        v = loaded.version
        started = time.perf_counter()
        deadline = max(item.deadline for item in items)
        fenced = fenced_of(loaded.runner_here()) is not None
        # fenced: the child is killed at deadline + MARGIN_S, so only a stall of this thread
        # itself makes the worker not ready; unfenced, model code past its deadline does
        stall = deadline + MARGIN_S + 2.0 if fenced else min(item.deadline for item in items)
        try:
            with self.watchdog.busy(stall), deadline_scope(deadline):
                outputs = forward(loaded, items)
        except (FenceTimeout, FenceDied) as exc:
            hung = isinstance(exc, FenceTimeout)
            why = "model did not answer within its deadline" if hung else f"model process died: {exc}"
            self._condemn(loaded, why)
            code = ErrorCode.DEADLINE_EXCEEDED if hung else ErrorCode.MODEL_ERROR
            self.metrics.failure(v.model, v.version, code, len(items))
            return BatchResult(self.fail(items, code, f"model execution failed: {why}"))
        except Exception as exc:
            if len(items) > 1:
                log.warning("batch of %d failed (%s); splitting it", len(items), type(exc).__name__)
                result = BatchResult()
                for group in split_failed(exc, items):
                    result.add(self._run_group(loaded, group))
                return result
            code = ErrorCode.INVALID_INPUT if isinstance(exc, InputRejected) else ErrorCode.MODEL_ERROR
            self.metrics.failure(v.model, v.version, code)
            return BatchResult(self.fail(items, code, f"model execution failed: {public_message(exc)}"))
        compute_s = time.perf_counter() - started
        wall = now_ms()
        self.metrics.batch(
            v.model,
            v.version,
            sum(i.count for i in items),
            len(items),
            compute_s,
            [max(0, wall - request_of(item).enqueued_ms) / 1000 - compute_s for item in items],
        )
        charges = charge_batch(self.metrics, v, items, compute_s)
        return BatchResult(self._split(loaded, items, outputs, compute_s), charges)

    def _split(
        self, loaded: Loaded, items: list[Item], outputs: dict[str, np.ndarray], compute_s: float
    ) -> list[Reply]:
        sig = loaded.version.signature
        replies: list[Reply] = []
        offset = 0
        total = sum(i.count for i in items)
        tokens = outputs.get(PROMPT_TOKENS)
        for item in items:
            msg = request_of(item)
            metas: list[TensorMeta] = []
            bufs: list[bytes] = []
            rows = slice(offset, offset + item.count) if loaded.policy.batching else slice(None)
            for name in msg.outputs or [t.name for t in sig.outputs]:
                spec = sig.output(name)
                assert spec is not None
                arr = outputs[name]
                if loaded.policy.batching:
                    arr = arr[rows]
                metas.append(TensorMeta(name, spec.datatype, tuple(int(d) for d in arr.shape)))
                bufs.append(to_bytes(arr, spec.datatype))
            offset += item.count
            reply = InferReplyMsg(
                request_id=msg.request_id,
                ok=True,
                outputs=metas,
                tensors=bufs,
                compute_us=int(compute_s * 1e6),
                batch_size=total,
                worker=self.worker_id,
                prompt_tokens=_tokens(tokens, rows),
            )
            replies.append((msg.reply_to, reply))
        return replies


def forward(loaded: Loaded, items: list[Item]) -> dict[str, np.ndarray]:
    """The batch through the calling thread's instance, its outputs checked against the signature."""
    sig = loaded.version.signature
    if len(items) == 1:
        batch = items[0].inputs
    else:
        batch = {t.name: np.concatenate([i.inputs[t.name] for i in items]) for t in sig.inputs}
    runner = loaded.runner_here()
    outputs = runner.run(batch) if loaded.adapter is None else run_adapter(runner, batch, loaded.adapter)
    total = sum(i.count for i in items)
    for spec in sig.outputs:
        out = outputs.get(spec.name)
        if out is None:
            raise ValueError(f"model produced no output {spec.name!r}")
        if loaded.policy.batching and (out.ndim == 0 or out.shape[0] != total):
            raise ValueError(
                f"model returned {out.shape[0] if out.ndim else 0} rows of {spec.name!r} for {total} items"
            )
    return outputs


def _tokens(counts: np.ndarray | None, rows: slice) -> int:
    """A request's input tokens: the sum of its rows' counts (PROMPT_TOKENS), when the runner
    returned them."""
    if counts is None:
        return 0
    return int(np.asarray(counts).reshape(-1)[rows].sum())
