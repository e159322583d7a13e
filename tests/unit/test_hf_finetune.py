"""The hf-encoder fine-tune pieces on a tiny random BERT: the head bundle (validation, signature,
served outputs), training only the head, resume equals a straight run."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save

from model_store.errors import InvalidArtifact
from model_store.hf_encoder import HEAD_CONFIG, HEAD_WEIGHTS, EncoderBundle
from model_store.hf_encoder import open_bundle as _open_bundle
from model_store.hf_encoder import validate_hf_encoder as _validate_hf_encoder
from model_store.limits import ArtifactLimits
from model_store.registry import ResolvedVersion
from model_store.signature import Signature, VersionConfig
from tests.hf_tiny import tiny_bundle, topic_rows
from workers.contract.datasets import Dataset, parse
from workers.contract.finetune_spec import Hyperparameters, JobSpec
from workers.finetune.build import Built, build
from workers.finetune.training import EVAL_CHUNK, Run, forward_all
from workers.inference.hf_runner import HFEncoderRunner

CPU = torch.device("cpu")
LIMITS = ArtifactLimits()


def open_bundle(data: bytes) -> EncoderBundle:
    return _open_bundle(io.BytesIO(data), LIMITS)


def validate_hf_encoder(data: bytes, given: Signature | None) -> Signature:
    return _validate_hf_encoder(io.BytesIO(data), given, LIMITS)


def _base(data: bytes) -> ResolvedVersion:
    sig = validate_hf_encoder(data, None)
    return ResolvedVersion(1, 1, "tiny", 1, "hf-encoder", "0" * 64, sig, VersionConfig())


def _data(n: int, seed: int) -> Dataset:
    ds, report = parse(topic_rows(n, seed), "jsonl")
    assert ds is not None, report.summary()
    return ds


def _run(spec: JobSpec, data: bytes) -> tuple[Run, Built]:
    train, valid = _data(32, 1), _data(12, 2)
    built = build(_base(data), data, spec, [train, valid], CPU, 5)
    return Run(built.module, built.sig, train, valid, spec, 5, CPU, built.encode), built


def test_head_only_training_learns_and_exports_a_servable_bundle() -> None:
    data = tiny_bundle()
    hp = Hyperparameters(epochs=3, batch_size=8, learning_rate=0.05, freeze=["backbone"], dropout=0.1)
    spec = JobSpec(task="classification", hyperparameters=hp)
    run, built = _run(spec, data)
    assert [n for n, p in run.module.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    encoder_before = {k: v.clone() for k, v in run.module.encoder.state_dict().items()}
    before = run.evaluate()
    while not run.done():
        run.train_epoch(lambda _row: None)
    after = run.evaluate()
    assert after["valid_loss"] < before["valid_loss"] and after["accuracy"] >= 0.75
    tokens = int(run.train_x[:, 1].sum())  # the attention mask: real tokens, no padding
    assert 0 < tokens <= run.train_x[:, 0].numel() and run.trained_tokens == 3 * tokens
    for k, v in run.module.encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k]), k

    artifact, fmt = built.export(run.module)
    assert fmt == "hf-encoder"
    sig = validate_hf_encoder(artifact, built.sig)
    assert [(o.name, o.shape) for o in sig.outputs] == [("logits", (-1, 2)), ("probabilities", (-1, 2))]
    runner = HFEncoderRunner(_base(artifact), artifact, "cpu", 0, LIMITS)
    texts = ["the goal match", "the soup bread"]
    out = runner.run({"text": np.array([t.encode() for t in texts], dtype=object)})
    run.module.eval()
    with torch.no_grad():
        expected = run.module(built.encode(texts))
    np.testing.assert_allclose(out["logits"], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-6)
    assert runner.run({"text": np.array([], dtype=object)})["probabilities"].shape == (0, 2)

    # the result is fine-tuned again: its head is kept (same task), the encoder is the trained one
    again = build(_base(artifact), artifact, spec, [_data(8, 3)], CPU, 9)
    assert torch.equal(again.module.head.weight, run.module.head.weight)
    assert again.sig == built.sig


def test_resume_from_state_equals_a_straight_run_and_regression_head() -> None:
    data = tiny_bundle()
    hp = Hyperparameters(epochs=2, batch_size=8, learning_rate=1e-3)  # the whole encoder trains
    spec = JobSpec(task="classification", hyperparameters=hp)
    straight, _ = _run(spec, data)
    full = [straight.train_epoch(lambda _row: None).valid for _ in range(2)]
    first, _ = _run(spec, data)
    first.train_epoch(lambda _row: None)
    state = first.state_bytes()
    torch.manual_seed(123)
    resumed, _ = _run(spec, data)
    resumed.load_state(state)
    assert [resumed.train_epoch(lambda _row: None).valid] == full[1:]

    reg = JobSpec(task="regression", hyperparameters=Hyperparameters(epochs=1, batch_size=8))
    run, built = _run(reg, data)
    run.train_epoch(lambda _row: None)
    artifact, _ = built.export(run.module)
    assert [o.name for o in validate_hf_encoder(artifact, None).outputs] == ["prediction"]
    out = HFEncoderRunner(_base(artifact), artifact, "cpu", 0, LIMITS).run(
        {"text": np.array(["the goal"], dtype=object)}
    )
    assert out["prediction"].shape == (1, 1)


def test_bad_heads_are_refused() -> None:
    head = {HEAD_CONFIG: json.dumps({"task": "classification", "num_outputs": 3}).encode()}
    with pytest.raises(InvalidArtifact, match="both"):
        open_bundle(tiny_bundle(extra=head))
    wrong = save({"weight": torch.zeros(3, 31), "bias": torch.zeros(3)})
    with pytest.raises(InvalidArtifact, match="weight"):
        open_bundle(tiny_bundle(extra={**head, HEAD_WEIGHTS: wrong}))
    bad_task = {HEAD_CONFIG: b'{"task": "ranking", "num_outputs": 3}', HEAD_WEIGHTS: wrong}
    with pytest.raises(InvalidArtifact, match="task"):
        open_bundle(tiny_bundle(extra=bad_task))
    good = save({"weight": torch.zeros(3, 32), "bias": torch.zeros(3)})
    bundle = open_bundle(tiny_bundle(extra={**head, HEAD_WEIGHTS: good}))
    assert bundle.head == {"task": "classification", "num_outputs": 3}
    assert isinstance(validate_hf_encoder(tiny_bundle(extra={**head, HEAD_WEIGHTS: good}), None), Signature)


def test_evaluation_runs_in_chunks() -> None:
    module = torch.nn.Linear(3, 2)
    x = torch.randn(EVAL_CHUNK * 2 + 5, 3)
    sig = Signature.model_validate(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        }
    )
    with torch.no_grad():
        torch.testing.assert_close(forward_all(module, x, sig), module(x))
