"""Usage charging: each executed batch's compute time divided among its requests by item count
(workers/contract/usage.py writes it in the pipeline that sends the batch's replies).

Charges are values that travel with their batch's replies, never state shared between
methods: batches of one version run at the same time on its instances (instances > 1)."""

from __future__ import annotations

from model_store.registry import ResolvedVersion
from workers.contract.messages import InferRequestMsg
from workers.contract.usage import Charge, split_compute
from workers.inference.batcher import Item
from workers.inference.metrics import WorkerMetrics


def request_of(item: Item) -> InferRequestMsg:
    msg: InferRequestMsg = item.key[1]
    return msg


def charge_batch(
    metrics: WorkerMetrics, version: ResolvedVersion, items: list[Item], compute_s: float
) -> list[Charge]:
    """The charges of one batch that ran for compute_s (counted in the metrics too)."""
    requests = [(request_of(i).tenant_id, request_of(i).key_id, i.count) for i in items]
    charges = split_compute(version.model, version.version, requests, compute_s)
    metrics.charge(charges)
    return charges
