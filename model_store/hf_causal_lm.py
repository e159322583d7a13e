"""The `hf-causal-lm` format: a text-generation model, served by the OpenAI routes.

Two shapes are accepted:

- a bundle (tar or zip, model_store.bundles): config.json, model.safetensors or shards with
  model.safetensors.index.json, tokenizer.json, and optionally tokenizer_config.json (special
  tokens, chat_template), chat_template.jinja, special_tokens_map.json, generation_config.json;
- one GGUF file (recognised by its magic bytes), dequantised on load by transformers.

Either way the architecture must be one transformers builds without remote code (ARCHITECTURES;
GGUF_ARCHITECTURES for GGUF), `auto_map`, `trust_remote_code` and quantisation configs are
refused, and every size the model is built from (layers, hidden size, vocabulary, context,
heads, feed-forward) is bounded before anything is allocated, with the parameter count held to
`ArtifactLimits.max_parameters` (KILN_MAX_MODEL_PARAMETERS). Weights only from safetensors or
GGUF, never pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_store.bundles import Bundle, Keep, Source, read_bundle
from model_store.errors import InvalidArtifact
from model_store.gguf_check import GGUFInfo, is_gguf, read_gguf
from model_store.hf_config import MAX_CONFIG_BYTES, MAX_HEADER_BYTES, elements, read_header
from model_store.limits import ArtifactLimits
from model_store.signature import Signature

FORMAT = "hf-causal-lm"
ARCHITECTURES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma",
    "gemma2",
    "gpt2",
    "starcoder2",
    "stablelm",
)
GGUF_ARCHITECTURES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma2",
    "gpt2",
    "starcoder2",
    "stablelm",
)
MAX_CONTEXT = 131_072
MAX_TOKENIZER_BYTES = 64 << 20
INDEX = "model.safetensors.index.json"
SMALL_JSON = (
    "config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    INDEX,
    "chat_template.jinja",
)
# (names in config.json (HF's, then GPT-2's), upper bound)
_BOUNDS: dict[str, tuple[tuple[str, ...], int]] = {
    "vocab": (("vocab_size",), 1_000_000),
    "hidden": (("hidden_size", "n_embd"), 32_768),
    "layers": (("num_hidden_layers", "n_layer"), 256),
    "heads": (("num_attention_heads", "n_head"), 256),
    "context": (("max_position_embeddings", "n_positions"), MAX_CONTEXT),
}
_CAPS = {**{n: MAX_CONFIG_BYTES for n in SMALL_JSON}, "tokenizer.json": MAX_TOKENIZER_BYTES}
_REMOTE_KEYS = ("auto_map", "trust_remote_code")


@dataclass(frozen=True, slots=True)
class CausalSizes:
    vocab: int
    hidden: int
    layers: int
    heads: int
    context: int
    intermediate: int

    def parameters(self) -> int:
        """Embeddings and head, then each layer's attention and gated feed-forward (an upper estimate)."""
        h = self.hidden
        return 2 * self.vocab * h + self.layers * (4 * h * h + 3 * h * self.intermediate)


@dataclass(frozen=True, slots=True)
class CausalBundle:
    files: dict[str, bytes]
    config: dict[str, Any]
    sizes: CausalSizes
    shards: tuple[str, ...]  # the safetensors members holding the weights


class _Keep(Keep):
    """Validation keeps the small JSON members and tokenizer.json whole, of every safetensors
    member only its header, and nothing else."""

    def limit(self, name: str) -> int | None:
        if name.endswith(".safetensors"):
            return 8 + MAX_HEADER_BYTES
        return None if name in SMALL_JSON or name == "tokenizer.json" else 0


def _int(config: dict[str, Any], names: tuple[str, ...], default: int | None = None) -> int:
    for name in names:
        value = config.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArtifact(f"config.json: {name} must be a non-negative integer")
        return value
    if default is None:
        raise InvalidArtifact(f"config.json needs {names[0]}")
    return default


def causal_sizes(config: Any, limits: ArtifactLimits) -> CausalSizes:
    """The sizes config.json names, each bounded, the architecture allowed, no remote code."""
    if not isinstance(config, dict):
        raise InvalidArtifact("config.json must be a JSON object")
    if any(k in config for k in _REMOTE_KEYS):
        raise InvalidArtifact("config.json asks for remote code (auto_map / trust_remote_code); refused")
    if config.get("model_type") not in ARCHITECTURES:
        raise InvalidArtifact(
            f"config.json: model_type {str(config.get('model_type'))[:40]!r} is not supported; "
            f"hf-causal-lm takes {', '.join(ARCHITECTURES)}"
        )
    if config.get("quantization_config") is not None:
        raise InvalidArtifact("quantised safetensors bundles are not supported; upload full weights or GGUF")
    found: dict[str, int] = {}
    for key, (names, bound) in _BOUNDS.items():
        found[key] = _int(config, names)
        if not 0 < found[key] <= bound:
            raise InvalidArtifact(f"config.json: {names[0]} must be between 1 and {bound}")
    inter = _int(config, ("intermediate_size", "n_inner"), 4 * found["hidden"])
    if not 0 < inter <= 262_144:
        raise InvalidArtifact("config.json: intermediate_size must be between 1 and 262144")
    if found["hidden"] % found["heads"]:
        raise InvalidArtifact("config.json: hidden_size must be a multiple of num_attention_heads")
    return _within(CausalSizes(**found, intermediate=inter), limits)


def _within(s: CausalSizes, limits: ArtifactLimits) -> CausalSizes:
    if s.parameters() > limits.max_parameters:
        raise InvalidArtifact(
            f"the model has about {s.parameters()} parameters; "
            f"the limit is {limits.max_parameters} (KILN_MAX_MODEL_PARAMETERS)"
        )
    return s


def _json(files: dict[str, bytes], name: str) -> Any:
    try:
        return json.loads(files[name])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArtifact(f"{name} is not valid JSON") from exc


def _shards(bundle: Bundle) -> tuple[str, ...]:
    if "model.safetensors" in bundle.sizes:
        return ("model.safetensors",)
    if INDEX not in bundle.sizes:
        raise InvalidArtifact("hf-causal-lm bundle lacks model.safetensors (or shards and their index)")
    index = _json(bundle.files, INDEX)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidArtifact(f"{INDEX} has no weight_map")
    names = sorted({str(v) for v in weight_map.values()})
    missing = [n for n in names if n not in bundle.sizes or not n.endswith(".safetensors")]
    if missing:
        raise InvalidArtifact(f"{INDEX} names shards the bundle lacks: {', '.join(missing)[:200]}")
    return tuple(names)


def _check_weights(bundle: Bundle, shards: tuple[str, ...], s: CausalSizes, limits: ArtifactLimits) -> None:
    total = 0
    embeddings = False
    for shard in shards:
        header = read_header(bundle.files[shard], bundle.sizes[shard])
        total += elements(header)
        for name, meta in header.items():
            if name.endswith(("embed_tokens.weight", "wte.weight")):
                embeddings = True
                if meta["shape"] != [s.vocab, s.hidden]:
                    raise InvalidArtifact(
                        f"{shard}: {name[:64]!r} is {meta['shape']}, config.json says {[s.vocab, s.hidden]}"
                    )
    if total > limits.max_parameters:
        raise InvalidArtifact(f"the weights hold more than {limits.max_parameters} parameters")
    if not embeddings:
        raise InvalidArtifact("the weights have no token embeddings (…embed_tokens.weight or wte.weight)")


def _check_tokenizer_config(files: dict[str, bytes]) -> None:
    for name in ("tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
        if name in files:
            value = _json(files, name)
            if not isinstance(value, dict):
                raise InvalidArtifact(f"{name} must be a JSON object")
            if any(k in value for k in _REMOTE_KEYS):
                raise InvalidArtifact(f"{name} asks for remote code (auto_map / trust_remote_code); refused")
            template = value.get("chat_template")
            if template is not None and not isinstance(template, str):
                raise InvalidArtifact(f"{name}: chat_template must be one template (a string)")


def open_causal_bundle(source: Source, limits: ArtifactLimits, weights: bool = True) -> CausalBundle:
    """The bundle, checked. Without `weights` (validation) only headers of the weights are kept."""
    keep = Keep(caps=_CAPS) if weights else _Keep(caps=_CAPS)
    bundle = read_bundle(source, limits, keep)
    missing = [n for n in ("config.json", "tokenizer.json") if n not in bundle.sizes]
    if missing:
        raise InvalidArtifact(f"hf-causal-lm bundle lacks {', '.join(missing)}")
    config = _json(bundle.files, "config.json")
    sizes = causal_sizes(config, limits)
    _check_tokenizer_config(bundle.files)
    shards = _shards(bundle)
    _check_weights(bundle, shards, sizes, limits)
    return CausalBundle(bundle.files, config, sizes, shards)


def gguf_sizes(info: GGUFInfo, limits: ArtifactLimits) -> CausalSizes:
    """A GGUF model's sizes from its metadata, bounded like a bundle's config."""
    arch = info.architecture
    if arch not in GGUF_ARCHITECTURES:
        raise InvalidArtifact(
            f"GGUF architecture {arch[:40]!r} is not supported; "
            f"hf-causal-lm takes {', '.join(GGUF_ARCHITECTURES)}"
        )
    if not isinstance(info.metadata.get("tokenizer.ggml.model"), str) or not info.array_len(
        "tokenizer.ggml.tokens"
    ):
        raise InvalidArtifact("GGUF file carries no tokenizer (tokenizer.ggml.*)")
    meta = {
        "vocab_size": info.array_len("tokenizer.ggml.tokens"),
        "hidden_size": info.metadata.get(f"{arch}.embedding_length"),
        "num_hidden_layers": info.metadata.get(f"{arch}.block_count"),
        "num_attention_heads": info.metadata.get(f"{arch}.attention.head_count"),
        "max_position_embeddings": info.metadata.get(f"{arch}.context_length"),
        "intermediate_size": info.metadata.get(f"{arch}.feed_forward_length"),
    }
    sizes = causal_sizes({"model_type": "llama", **{k: v for k, v in meta.items() if v is not None}}, limits)
    if sum(t.elements for t in info.tensors) > limits.max_parameters:
        raise InvalidArtifact(f"the GGUF tensors hold more than {limits.max_parameters} parameters")
    return sizes


def check_gguf(path: Path, limits: ArtifactLimits) -> tuple[GGUFInfo, CausalSizes]:
    info = read_gguf(path)
    return info, gguf_sizes(info, limits)


def causal_lm_signature() -> Signature:
    """What the registry records for a text-generation version (served by the OpenAI routes)."""
    return Signature.model_validate(
        {
            "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        }
    )


def validate_hf_causal_lm(path: Path, given: Signature | None, limits: ArtifactLimits) -> Signature:
    if is_gguf(path):
        check_gguf(path, limits)
    else:
        bundle = open_causal_bundle(path, limits, weights=False)
        try:
            from tokenizers import Tokenizer

            Tokenizer.from_str(bundle.files["tokenizer.json"].decode("utf-8"))
        except Exception as exc:
            raise InvalidArtifact("tokenizer.json is not a valid tokenizer") from exc
    sig = causal_lm_signature()
    if given is not None and given != sig:
        raise InvalidArtifact(f"an hf-causal-lm's signature is fixed: {sig.model_dump(mode='json')}")
    return sig
