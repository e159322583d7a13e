"""Validation of dequeued entries, each on its own: an entry delivered too often is
dead-lettered, a message that does not parse or whose deadline has passed is answered at once,
and a request is decoded and checked against its version's signature before it may join a batch.
(Unrelated to the gateway's `Admission.admit`, which applies tenant limits before enqueueing.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from model_store.registry import ResolvedVersion
from workers.contract.messages import ContractError, ErrorCode, InferReplyMsg, InferRequestMsg
from workers.contract.tensors import TensorDecodeError, from_bytes
from workers.inference.batcher import BatchPolicy, Item
from workers.inference.metrics import WorkerMetrics
from workers.inference.queue import Entry, WorkQueue

Reply = tuple[str, InferReplyMsg]  # (reply stream, reply); "" when no stream can be named


class ItemRejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Version(Protocol):
    """What validation needs of a loaded version (model_cache.Loaded)."""

    @property
    def version(self) -> ResolvedVersion: ...

    @property
    def policy(self) -> BatchPolicy: ...


@dataclass(frozen=True, slots=True)
class Valid:
    """A request ready to batch; `alone`: redelivered, so suspect: it runs alone and now."""

    version_id: int
    policy: BatchPolicy
    item: Item
    alone: bool


def now_ms() -> int:
    return int(time.time() * 1000)


class Validator:
    def __init__(
        self,
        queue: WorkQueue,
        metrics: WorkerMetrics,
        worker_id: str,
        max_deliveries: int,
        model: Callable[[int], Version],
    ) -> None:
        self.queue = queue
        self.metrics = metrics
        self.worker_id = worker_id
        self.max_deliveries = max_deliveries
        self._model = model  # version id -> the loaded version (loads it; ItemRejected if it cannot)

    def validate(self, entry: Entry) -> Valid | Reply:
        """The item to batch, or the failure reply that finishes the entry."""
        if entry.deliveries > self.max_deliveries:
            self.queue.dead_letter(entry, f"delivered {entry.deliveries} times")
            self.metrics.dead_lettered.inc()
            ident = InferRequestMsg.peek_id(entry.fields) or ("", "")
            return ident[1], InferReplyMsg.failure(
                ident[0],
                ErrorCode.DEAD_LETTERED,
                "request failed on every delivery and was dead-lettered",
                self.worker_id,
            )
        try:
            msg = InferRequestMsg.from_fields(entry.fields)
        except ContractError as exc:
            ident = InferRequestMsg.peek_id(entry.fields) or ("", "")
            return ident[1], InferReplyMsg.failure(ident[0], ErrorCode.INVALID_INPUT, str(exc))
        remaining_ms = msg.deadline_ms - now_ms()
        if remaining_ms <= 0:
            return msg.reply_to, InferReplyMsg.failure(
                msg.request_id, ErrorCode.DEADLINE_EXCEEDED, "deadline passed while queued", self.worker_id
            )
        try:
            loaded = self._model(self.queue.keys.version_of(entry.stream))
            inputs, count, shape_key = decode(loaded.version, loaded.policy, msg)
        except ItemRejected as exc:
            return msg.reply_to, InferReplyMsg.failure(msg.request_id, exc.code, str(exc), self.worker_id)
        mono = time.monotonic()
        item = Item(
            key=(entry, msg),
            inputs=inputs,
            count=count,
            shape_key=shape_key,
            arrived=mono,
            deadline=mono + remaining_ms / 1000,
            priority=msg.priority,
        )
        return Valid(loaded.version.version_id, loaded.policy, item, alone=entry.deliveries > 1)


def decode(
    version: ResolvedVersion, policy: BatchPolicy, msg: InferRequestMsg
) -> tuple[dict[str, np.ndarray], int, tuple[Any, ...]]:
    """Check one item against the signature on its own and decode its tensors."""
    sig = version.signature
    given = {t.name for t in msg.inputs}
    wanted = {t.name for t in sig.inputs}
    if given != wanted:
        raise ItemRejected(ErrorCode.INVALID_INPUT, f"inputs must be exactly {sorted(wanted)}")
    inputs: dict[str, np.ndarray] = {}
    for meta, buf in zip(msg.inputs, msg.tensors, strict=True):
        spec = sig.input(meta.name)
        assert spec is not None
        if meta.datatype != spec.datatype or not spec.matches_shape(meta.shape):
            raise ItemRejected(ErrorCode.INVALID_INPUT, f"input {meta.name!r} does not match the signature")
        try:
            inputs[meta.name] = from_bytes(buf, meta.datatype, meta.shape)
        except TensorDecodeError as exc:
            raise ItemRejected(ErrorCode.INVALID_INPUT, f"input {meta.name!r}: {exc}") from exc
    counts = {arr.shape[0] for arr in inputs.values()} if policy.batching else {1}
    if len(counts) != 1:
        raise ItemRejected(ErrorCode.INVALID_INPUT, "inputs disagree on the batch dimension")
    shape_key = tuple(inputs[t.name].shape[1:] for t in sig.inputs) if policy.batching else ()
    return inputs, counts.pop(), shape_key
