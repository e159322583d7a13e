"""LoRA adapter versions on an hf-encoder runner (workers/inference/encoder_adapters.py): each
adapter's outputs equal peft's on a copy of the base (+ its head), the base's own outputs are
unchanged, all of them run on the runner's one copy of the encoder, the LRU evicts and reloads,
and a dynamic-int8 base takes adapters too."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from model_store.hf_encoder import encoder_signature
from model_store.limits import ArtifactLimits
from model_store.registry import ResolvedVersion
from model_store.signature import VersionConfig
from tests.encoder_lora import make_adapter, pack
from tests.hf_tiny import tiny_bundle
from workers.common.lora import AdapterMismatch, LoraLinear
from workers.contract.errors import LoadError
from workers.inference.adapter_versions import read_adapter_bytes
from workers.inference.runtime import PROMPT_TOKENS, AdapterMissing, AdapterRef, run_adapter

pytest.importorskip("peft")

TEXTS = ["the team won the final", "the chef baked bread", "garlic soup for dinner", "a"]


def _version(data: bytes, vid: int = 1) -> ResolvedVersion:
    return ResolvedVersion(vid, 1, "base", 1, "hf-encoder", "0" * 64, encoder_signature(32), VersionConfig())


def _runner(data: bytes):  # type: ignore[no-untyped-def]
    from workers.inference.hf_runner import HFEncoderRunner

    return HFEncoderRunner(_version(data), data, "cpu", 1, ArtifactLimits())


def _inputs(texts: list[str]) -> dict[str, np.ndarray]:
    arr = np.empty(len(texts), dtype=object)
    arr[:] = [t.encode() for t in texts]
    return {"text": arr}


def test_adapters_equal_peft_on_one_copy_of_the_base() -> None:
    base = tiny_bundle(seed=3)
    plain = _runner(base).run(_inputs(TEXTS))["embedding"]
    runner = _runner(base)
    params = {name: p for name, p in runner._model.named_parameters()}
    cls = make_adapter(base, seed=1, head=("classification", 3))
    emb = make_adapter(base, seed=2)
    runner.add_adapter(11, cls.data, 8)
    runner.add_adapter(12, emb.data, 8)
    got_cls = runner.run_adapter(_inputs(TEXTS), 11)
    got_emb = runner.run_adapter(_inputs(TEXTS), 12)
    want_cls, want_emb = cls.reference(TEXTS), emb.reference(TEXTS)
    assert set(got_cls) == {"logits", "probabilities", PROMPT_TOKENS} and got_cls["logits"].shape == (4, 3)
    assert got_cls[PROMPT_TOKENS].shape == (4,) and (got_cls[PROMPT_TOKENS] > 0).all()  # usage
    for name in want_cls:
        np.testing.assert_allclose(got_cls[name], want_cls[name], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_emb["embedding"], want_emb["embedding"], rtol=1e-4, atol=1e-5)
    assert np.abs(got_emb["embedding"] - plain).max() > 1e-3  # the adapter does change the output
    # the base answers as before, on the very same parameters (wrapped, never copied)
    np.testing.assert_allclose(runner.run(_inputs(TEXTS))["embedding"], plain, rtol=1e-5, atol=1e-6)
    query = runner._model.encoder.layer[0].attention.self.query
    assert isinstance(query, LoraLinear) and set(query.adapters) == {11, 12}
    after = {name.replace(".base.", "."): p for name, p in runner._model.named_parameters()}
    assert after.keys() == params.keys() and all(after[n] is params[n] for n in params)
    assert runner.adapters._holder.encoder is runner._model
    empty = runner.run_adapter(_inputs([]), 11)
    assert empty["logits"].shape == (0, 3) and empty["probabilities"].shape == (0, 3)


def test_lru_evicts_and_the_worker_sends_it_again() -> None:
    base = tiny_bundle(seed=3)
    runner = _runner(base)
    a, b = make_adapter(base, seed=1), make_adapter(base, seed=2)
    runner.add_adapter(1, a.data, 1)
    runner.add_adapter(2, b.data, 1)  # capacity 1: adapter 1 is evicted
    assert not runner.has_adapter(1) and runner.has_adapter(2)
    with pytest.raises(AdapterMissing):
        runner.run_adapter(_inputs(TEXTS), 1)
    got = run_adapter(runner, _inputs(TEXTS), AdapterRef(1, a.data, 1))  # reloads it
    np.testing.assert_allclose(got["embedding"], a.reference(TEXTS)["embedding"], rtol=1e-4, atol=1e-5)
    assert runner.adapters.set is not None and runner.adapters.set.evictions == 2


def test_dynamic_int8_base_takes_adapters() -> None:
    from workers.finetune.compress_methods import quantize_hf

    base = quantize_hf(tiny_bundle(seed=3), "dynamic-int8").data
    runner = _runner(base)
    query = runner._model.encoder.layer[0].attention.self.query
    assert type(query).__module__.startswith("torch.ao.nn.quantized")
    adapter = make_adapter(base, seed=1, head=("regression", 2))
    runner.add_adapter(5, adapter.data, 8)
    got = runner.run_adapter(_inputs(TEXTS), 5)["prediction"]
    want = adapter.reference(TEXTS)["prediction"]  # peft on the dequantised fp32 encoder
    assert np.abs(got - want).max() < 0.05
    assert isinstance(runner._model.encoder.layer[0].attention.self.query, LoraLinear)


def test_an_adapter_that_does_not_fit_the_base_is_refused() -> None:
    small, other = tiny_bundle(seed=3), _wider_bundle()
    runner = _runner(small)
    with pytest.raises(AdapterMismatch):
        runner.add_adapter(1, make_adapter(other, seed=1).data, 8)


def _wider_bundle() -> bytes:
    import json
    import tarfile

    import transformers
    from safetensors.torch import save

    with tarfile.open(fileobj=io.BytesIO(tiny_bundle()), mode="r") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    config = json.loads(files["config.json"]) | {"hidden_size": 48, "num_attention_heads": 2}
    model = transformers.BertModel(transformers.BertConfig(**config), add_pooling_layer=False)
    files["config.json"] = json.dumps(config).encode()
    files["model.safetensors"] = save({k: v.contiguous() for k, v in model.state_dict().items()})
    return pack(files)


def test_the_worker_checks_an_adapter_before_sending_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    base = tiny_bundle(seed=3)
    adapter = make_adapter(base, seed=1, head=("classification", 3))
    path = tmp_path / "blob"
    path.write_bytes(adapter.data)
    digest = hashlib.sha256(adapter.data).hexdigest()

    def version(sig, sha=digest):  # type: ignore[no-untyped-def]
        return ResolvedVersion(9, 1, "a", 1, "lora-adapter", sha, sig, VersionConfig(), adapter_of=1)

    assert read_adapter_bytes(path, version(adapter.signature), ArtifactLimits()) == adapter.data
    with pytest.raises(LoadError, match="sha256"):
        read_adapter_bytes(path, version(adapter.signature, "1" * 64), ArtifactLimits())
    with pytest.raises(LoadError, match="signature"):  # a head adapter claiming to answer embeddings
        read_adapter_bytes(path, version(encoder_signature(32)), ArtifactLimits())


def _crafted(tensors: dict[str, torch.Tensor], targets: list[str]) -> bytes:
    import json

    from safetensors.torch import save

    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": targets,
        "base_format": "hf-encoder",
        "task": "classification",
        "head": None,
    }
    return pack(
        {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": save(tensors)}
    )


@pytest.mark.parametrize(
    ("path", "targets"),
    [
        ("encoder.embeddings.word_embeddings", ["word_embeddings"]),  # not a linear layer
        ("encoder.__class__", ["__class__"]),  # not a module
        ("encoder.encoder.layer.7.attention.self.query", ["query"]),  # no such layer
        ("head", ["head"]),  # the holder has no head
    ],
)
def test_hostile_layer_paths_are_refused_and_leave_the_base_as_it_was(path: str, targets: list[str]) -> None:
    base = tiny_bundle(seed=3)
    runner = _runner(base)
    plain = runner.run(_inputs(TEXTS))["embedding"]
    good = "encoder.encoder.layer.0.attention.self.query"
    tensors = {
        f"{good}.lora_A.weight": torch.randn(4, 32),
        f"{good}.lora_B.weight": torch.randn(32, 4),
        f"{path}.lora_A.weight": torch.randn(4, 32),
        f"{path}.lora_B.weight": torch.randn(32, 4),
    }
    with pytest.raises(AdapterMismatch):
        runner.add_adapter(3, _crafted(tensors, sorted({"query", *targets})), 8)
    assert not runner.has_adapter(3)
    query = runner._model.encoder.layer[0].attention.self.query
    assert not getattr(query, "adapters", {})  # nothing of the refused adapter stays attached
    np.testing.assert_allclose(runner.run(_inputs(TEXTS))["embedding"], plain, rtol=1e-6)
