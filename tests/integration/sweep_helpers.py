"""Helpers for sweep tests: bodies, polling a sweep with a deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")
GRID_SPACE = {
    "learning_rate": {"type": "choice", "values": [0.002, 0.03]},
    "batch_size": {"type": "choice", "values": [16, 64]},
}


def sweep_body(train: str, valid: str, search: dict[str, Any], **extra: Any) -> dict[str, Any]:
    hp = {"epochs": 3, "batch_size": 32, "learning_rate": 0.01, "optimizer": "adam"}
    hp.update(extra.pop("hyperparameters", {}))
    return {
        "model": "clf",
        "training_file": train,
        "validation_file": valid,
        "seed": 7,
        "hyperparameters": hp,
        "search": search,
        "space": extra.pop("space", GRID_SPACE),
        **extra,
    }


async def wait_sweep(
    client: httpx.AsyncClient,
    sweep_id: str,
    statuses: tuple[str, ...] = TERMINAL,
    timeout: float = 300,
    pred: Any = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        sweep = (await client.get(f"/v1/fine_tuning/sweeps/{sweep_id}")).json()
        if sweep["status"] in statuses and (pred is None or pred(sweep)):
            return sweep
        assert time.monotonic() < deadline, f"sweep stuck: {sweep}"
        await asyncio.sleep(0.2)
