"""Multi-adapter LoRA layers (workers/common/lora.py) against peft's own LoRA on the same weights."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch

from model_store.errors import InvalidArtifact
from model_store.limits import ArtifactLimits
from model_store.lora_adapter import open_adapter, parse_config
from tests.causal_tiny import tar_of as pack
from workers.common.lora import (
    AdapterCapacity,
    AdapterMismatch,
    AdapterSet,
    read_adapter,
    selecting,
    state_of,
)

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def tiny_llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def adapter_bundle(model: torch.nn.Module, seed: int, r: int = 4) -> tuple[bytes, torch.nn.Module]:
    """A peft LoRA on a copy of `model` (random A and B), exported in the lora-adapter format."""
    from safetensors.torch import save

    tuned = copy.deepcopy(model)
    cfg = peft.LoraConfig(r=r, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(seed)
    peft.inject_adapter_in_model(cfg, tuned)
    tuned.eval()
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "base_format": "hf-causal-lm",
        "task": "causal-lm",
        "head": None,
    }
    return pack(
        {
            "adapter_config.json": json.dumps(config).encode(),
            "adapter_model.safetensors": save(state_of(tuned)),
        }
    ), tuned


def test_one_adapter_equals_peft_and_base_is_untouched() -> None:
    base = tiny_llama()
    data, tuned = adapter_bundle(base, seed=1)
    served = copy.deepcopy(base)
    adapters = AdapterSet(served, capacity=2)
    adapters.ensure(7, lambda: read_adapter(io.BytesIO(data), ArtifactLimits()))
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        want = tuned(ids).logits
        with selecting(7):
            got = served(ids).logits
        plain = served(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain, base(ids).logits)
    assert not torch.allclose(plain, want, atol=1e-3)


def test_mixed_tokens_each_get_their_own_adapter() -> None:
    base = tiny_llama()
    (d1, _t1), (d2, _t2) = adapter_bundle(base, 1), adapter_bundle(base, 2)
    served = copy.deepcopy(base)
    adapters = AdapterSet(served, capacity=4)
    adapters.ensure(1, lambda: read_adapter(io.BytesIO(d1), ArtifactLimits()))
    adapters.ensure(2, lambda: read_adapter(io.BytesIO(d2), ArtifactLimits()))
    x = torch.randn(1, 6, 32)
    layer = served.model.layers[0].self_attn.q_proj
    with torch.no_grad(), selecting(torch.tensor([1, 1, 2, 2, -1, 1])):
        mixed = layer(x)
    with torch.no_grad():
        with selecting(1):
            only1 = layer(x)
        with selecting(2):
            only2 = layer(x)
        none = layer(x)
    torch.testing.assert_close(mixed[0, [0, 1, 5]], only1[0, [0, 1, 5]])
    torch.testing.assert_close(mixed[0, [2, 3]], only2[0, [2, 3]])
    torch.testing.assert_close(mixed[0, 4], none[0, 4])


def test_lru_eviction_spares_pinned_adapters() -> None:
    base = tiny_llama()
    bundles = [adapter_bundle(base, s)[0] for s in range(3)]
    adapters = AdapterSet(base, capacity=2)

    def load(i: int):
        return lambda: read_adapter(io.BytesIO(bundles[i]), ArtifactLimits())

    adapters.ensure(0, load(0))
    adapters.ensure(1, load(1))
    adapters.pin(0)
    adapters.ensure(2, load(2))  # evicts 1, the unpinned one
    assert list(adapters.loaded) == [0, 2] and adapters.evictions == 1
    adapters.pin(2)
    with pytest.raises(AdapterCapacity):
        adapters.ensure(1, load(1))
    assert all(1 not in m.adapters for m in base.modules() if hasattr(m, "adapters"))


def test_an_adapter_for_another_shape_is_refused() -> None:
    data, _ = adapter_bundle(tiny_llama(), 1)
    other = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(AdapterMismatch):
        AdapterSet(other, 2).ensure(1, lambda: read_adapter(io.BytesIO(data), ArtifactLimits()))


@pytest.mark.parametrize(
    "members, message",
    [
        ({"adapter_config.json": b"{}"}, "exactly"),
        ({"adapter_config.json": b"[]", "adapter_model.safetensors": b"x" * 16}, "JSON object"),
        (
            {"adapter_config.json": b"{}", "adapter_model.safetensors": b"", "model.pkl": b"\x80\x04"},
            "pickle",
        ),
    ],
)
def test_bad_bundles_are_refused(members: dict[str, bytes], message: str) -> None:
    with pytest.raises(InvalidArtifact, match=message):
        open_adapter(io.BytesIO(pack(members)), ArtifactLimits())


def test_config_fields_are_checked() -> None:
    good = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj"],
        "base_format": "hf-causal-lm",
        "task": "causal-lm",
        "head": None,
    }
    assert parse_config(json.dumps(good).encode()).scale == 2.0
    for bad in (
        {"r": 0},
        {"r": 1000},
        {"target_modules": ["../x"]},
        {"auto_map": {}},
        {"lora_alpha": True},
        {"base_format": "onnx"},
        {"head": {"num_outputs": -1}},
    ):
        with pytest.raises(InvalidArtifact):
            parse_config(json.dumps({**good, **bad}).encode())


def test_tensor_names_must_be_lora_pairs_of_targeted_layers() -> None:
    from safetensors.torch import save

    cfg = {
        "peft_type": "LORA",
        "r": 2,
        "lora_alpha": 4,
        "target_modules": ["q_proj"],
        "base_format": "hf-causal-lm",
        "task": "causal-lm",
        "head": None,
    }
    for tensors in (
        {"model.embed_tokens.weight": torch.zeros(2, 2)},
        {"x.v_proj.lora_A.weight": torch.zeros(2, 8), "x.v_proj.lora_B.weight": torch.zeros(8, 2)},
        {"x.q_proj.lora_A.weight": torch.zeros(2, 8)},
        {"x.q_proj.lora_A.weight": torch.zeros(3, 8), "x.q_proj.lora_B.weight": torch.zeros(8, 3)},
    ):
        data = pack(
            {"adapter_config.json": json.dumps(cfg).encode(), "adapter_model.safetensors": save(tensors)}
        )
        with pytest.raises(InvalidArtifact):
            open_adapter(io.BytesIO(data), ArtifactLimits())
