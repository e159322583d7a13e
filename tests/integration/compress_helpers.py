"""Helpers for compression tests: a trainer with one torch thread, polling, fixtures' models."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from typing import Any

import httpx
import numpy as np
import torch

from service.settings import Settings
from tests.ft_data import jsonl, rows
from tests.integration.ft_helpers import TERMINAL, TrainerThread, upload
from tests.integration.helpers import register
from tests.models import torchscript_bytes
from workers.contract.finetune_check import FenceLimits

SIG = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
}


def trainer(settings: Settings) -> TrainerThread:
    limits = dataclasses.replace(FenceLimits.from_settings(settings), threads=1)
    return TrainerThread(settings, lease_s=30, limits=limits).start()


async def wait_job(client: httpx.AsyncClient, job_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = (await client.get(f"/v1/compression/jobs/{job_id}")).json()
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job stuck: {job}"
        await asyncio.sleep(0.2)


class Wide(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def trained_mlp() -> bytes:
    """An MLP trained here on the fixture rule (a parent worth pruning: about 95% accurate)."""
    torch.manual_seed(0)
    model = Wide()
    x, y = rows(800, 5)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torchscript_bytes(model.eval())


async def setup_mlp(client: httpx.AsyncClient, name: str = "mlp") -> tuple[str, str]:
    r = await register(client, name, trained_mlp(), "torchscript", signature=SIG)
    assert r.status_code == 201, r.text
    train = await upload(client, jsonl(*rows(800, 1)))
    valid = await upload(client, jsonl(*rows(200, 2)), "valid.jsonl")
    return train.json()["id"], valid.json()["id"]


def teacher_bundle(data: bytes, texts: list[tuple[str, int]]) -> bytes:
    """MiniLM with a classification head trained here on its (frozen) embeddings."""
    from workers.common.hf_model import export_bundle, for_finetune

    torch.manual_seed(0)
    module, encode, bundle = for_finetune(data, torch.device("cpu"), "classification", 2)
    with torch.no_grad():
        from workers.common.hf_model import embed

        emb = embed(module.encoder, module.wants_types, encode([t for t, _ in texts]))
    y = torch.tensor([label for _, label in texts])
    opt = torch.optim.Adam(module.head.parameters(), lr=0.05)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(module.head(emb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return export_bundle(module, bundle, "classification")


def tokens_of(bundle: bytes, texts: list[str]) -> np.ndarray:
    from model_store.hf_encoder import open_bundle
    from model_store.limits import ArtifactLimits
    from workers.common.hf_model import make_tokenizer, tokenize

    tok = make_tokenizer(open_bundle(io.BytesIO(bundle), ArtifactLimits()))
    return tokenize(tok, texts).numpy()
