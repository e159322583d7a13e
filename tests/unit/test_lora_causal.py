"""LoRA fine-tunes of a causal LM (a tiny random Llama, tests/causal_tiny.py) on chat rows: only
the adapter trains and is checkpointed, the loss counts assistant tokens only, resume equals a
straight run, and the exported adapter attached to a fresh base (as serving does) gives the
trained model's logits."""

from __future__ import annotations

import io
import json

import pytest
import torch

from model_store.limits import ArtifactLimits
from model_store.lora_adapter import open_adapter
from model_store.registry import ResolvedVersion
from model_store.signature import VersionConfig
from tests.causal_tiny import tar_of, tiny_bundle, tiny_files
from workers.common.lora import AdapterSet, read_adapter, selecting
from workers.contract.datasets import Dataset, parse
from workers.contract.finetune_spec import Hyperparameters, JobSpec, LoraSpec
from workers.finetune.build import build
from workers.finetune.child import lora_of
from workers.finetune.model import ModelNotTrainable
from workers.finetune.training import Run

pytest.importorskip("peft")
CPU = torch.device("cpu")


def chat_rows(n: int, answer: str = "Blue.") -> bytes:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": f"Question {i}: what colour is the sky?"},
                {"role": "assistant", "content": answer},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def learnable_bundle(seed: int) -> bytes:
    """A tiny random Llama whose output layer is large enough for a confident next-token
    distribution: at the default init (std 0.02) logits stay near uniform whatever LoRA does."""
    from safetensors.torch import load, save

    files = tiny_files(seed=seed)
    state = load(files["model.safetensors"])
    state["lm_head.weight"] = state["lm_head.weight"] * 50
    return tar_of({**files, "model.safetensors": save(state)})


def _base(data: bytes) -> ResolvedVersion:
    import hashlib

    from model_store.hf_causal_lm import causal_lm_signature

    sha = hashlib.sha256(data).hexdigest()
    return ResolvedVersion(1, 1, "tiny", 1, "hf-causal-lm", sha, causal_lm_signature(), VersionConfig())


def _ds(data: bytes) -> Dataset:
    ds, report = parse(data, "jsonl")
    assert ds is not None and ds.is_chat, report.summary()
    return ds


def _run(hp: Hyperparameters, data: bytes, tmp_path) -> tuple[Run, object]:
    import os

    os.environ["TMPDIR"] = str(tmp_path)
    spec = JobSpec(task="causal-lm", hyperparameters=hp)
    train, valid = _ds(chat_rows(24)), _ds(chat_rows(8))
    built = build(_base(data), data, spec, [train, valid], CPU, 7)
    return Run(built.module, built.sig, train, valid, spec, 7, CPU, None, None, lora_of(built)), built


ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _members(data: bytes) -> list[tuple[str, bytes]]:
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


HP = Hyperparameters(
    epochs=10, batch_size=8, learning_rate=3e-2, lora=LoraSpec(rank=8, alpha=16, target_modules=ALL)
)


def test_lora_learns_the_answer_and_the_adapter_serves_it(tmp_path) -> None:
    data = learnable_bundle(3)
    run, built = _run(HP, data, tmp_path)
    trained = [n for n, p in run.module.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    frozen_before = {n: p.clone() for n, p in run.module.named_parameters() if not p.requires_grad}
    labels = run.train_y[0][run.train_y[0] != -100]
    assert 0 < len(labels) < int(run.train_x[0, 1].sum())  # assistant tokens only
    before = run.evaluate()
    while not run.done():
        run.train_epoch(lambda _row: None)
    after = run.evaluate()
    assert after["valid_loss"] < 0.3 * before["valid_loss"], (before, after)
    assert after["perplexity"] == pytest.approx(torch.tensor(after["valid_loss"]).exp().item(), rel=1e-4)
    for n, p in run.module.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    assert run.trained_tokens is not None and run.trained_tokens > 0
    state = torch.load(io.BytesIO(run.state_bytes()), weights_only=True)
    assert set(state["model"]) == set(trained)  # the checkpoint holds the adapter, not the base

    artifact, fmt = built.export(run.module)  # type: ignore[attr-defined]
    assert fmt == "lora-adapter" and len(artifact) < 0.5 * len(data)  # SmolLM2: see the e2e test
    bundle = open_adapter(io.BytesIO(artifact), ArtifactLimits())
    assert bundle.config.task == "causal-lm" and bundle.config.base_format == "hf-causal-lm"

    import transformers
    from safetensors.torch import load

    from tests.causal_tiny import tiny_config

    fresh = transformers.AutoModelForCausalLM.from_config(tiny_config())
    fresh.load_state_dict(load(dict(_members(data))["model.safetensors"]), strict=False)
    fresh.tie_weights()
    fresh.eval()
    AdapterSet(fresh, 2).ensure(5, lambda: read_adapter(io.BytesIO(artifact), ArtifactLimits()))
    x = run.valid_x[:2]
    run.module.eval()
    with torch.no_grad(), selecting(5):
        served = fresh(input_ids=x[:, 0], attention_mask=x[:, 1]).logits
    with torch.no_grad():
        torch.testing.assert_close(served, run.module(x), rtol=1e-4, atol=1e-4)


def test_resume_from_a_checkpoint_equals_a_straight_run(tmp_path) -> None:
    data = learnable_bundle(4)
    hp = HP.model_copy(update={"epochs": 2})
    straight, _ = _run(hp, data, tmp_path)
    straight.train_epoch(lambda _row: None)
    ckpt = straight.state_bytes()
    straight.train_epoch(lambda _row: None)
    resumed, _ = _run(hp, data, tmp_path)
    resumed.load_state(ckpt)
    resumed.train_epoch(lambda _row: None)
    assert resumed.evaluate()["valid_loss"] == pytest.approx(straight.evaluate()["valid_loss"], rel=1e-6)


def test_a_tabular_dataset_or_unknown_target_is_refused(tmp_path) -> None:
    data = tiny_bundle()
    spec = JobSpec(task="causal-lm", hyperparameters=Hyperparameters(lora=LoraSpec(target_modules=["nope"])))
    with pytest.raises(ModelNotTrainable, match="no linear layer named 'nope'"):
        build(_base(data), data, spec, [], CPU, 0)
    import os

    os.environ["TMPDIR"] = str(tmp_path)
    ok = JobSpec(task="causal-lm", hyperparameters=HP)
    built = build(_base(data), data, ok, [], CPU, 0)
    text, _ = parse(b'{"text": "hello", "label": 1}\n', "jsonl")
    assert text is not None
    with pytest.raises(ModelNotTrainable, match="chat or prompt/completion"):
        built.tensors(text)  # type: ignore[misc]
