"""The `hf-encoder` format: a Hugging Face sentence encoder as a bundle of
config.json + model.safetensors + tokenizer.json (+ sentence-transformers' pooling config).
BYTES text in, FP32 mean-pooled, L2-normalised sentence embeddings out; tokenisation happens
on the worker. Weights only from safetensors, never pickle; no remote code.

A fine-tuned bundle also carries a head (HEAD_CONFIG + HEAD_WEIGHTS): one linear layer on the
normalised embedding, `{"task": "classification" | "regression", "num_outputs": K}` with
tensors `weight` [K, hidden] and `bias` [K]. Its signature then says what comes out:
classification -> `logits` and `probabilities` (softmax), FP32 [-1, K]; regression ->
`prediction`, FP32 [-1, K]. Such a bundle is fine-tuned again like any other."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from model_store.bundles import Bundle, Keep, Source, read_bundle
from model_store.errors import InvalidArtifact
from model_store.hf_config import MAX_CONFIG_BYTES, MAX_HEADER_BYTES, check_weights, read_header, sizes
from model_store.limits import ArtifactLimits
from model_store.signature import Signature

REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")
DEFAULT_MAX_SEQ = 256
HEAD_CONFIG = "kiln_head.json"
HEAD_WEIGHTS = "kiln_head.safetensors"
HEAD_TASKS = ("classification", "regression")
# a compressed bundle (workers/finetune/compress_*): {"scheme": one of QUANT_SCHEMES}. int8: each
# linear weight `W` is I8 with a per-row F32 scale `W` + SCALE_SUFFIX, the rest F16; at load the
# attention projections (or, -all, every linear layer) run torch.ao dynamic int8, the rest fp32
QUANT_CONFIG = "kiln_quant.json"
QUANT_SCHEMES = ("dynamic-int8", "dynamic-int8-all", "fp16")
SCALE_SUFFIX = ".kiln_scale"
MAX_TOKENIZER_BYTES = 64 << 20
_SMALL_JSON = ("config.json", "1_Pooling/config.json", "sentence_bert_config.json", HEAD_CONFIG, QUANT_CONFIG)
# validation holds only what it reads; of the weights only their header
_VALIDATED = (*_SMALL_JSON, "tokenizer.json")
_HEADERS_ONLY = {"model.safetensors": 8 + MAX_HEADER_BYTES, HEAD_WEIGHTS: 8 + MAX_HEADER_BYTES}
_CAPS = {**{name: MAX_CONFIG_BYTES for name in _SMALL_JSON}, "tokenizer.json": MAX_TOKENIZER_BYTES}


@dataclass(frozen=True, slots=True)
class EncoderBundle:
    files: dict[str, bytes]
    config: dict[str, Any]
    max_seq_length: int
    head: dict[str, Any] | None = None  # the head config, when the bundle carries one
    quant: str | None = None  # the scheme of a compressed bundle (QUANT_CONFIG)

    @property
    def hidden_size(self) -> int:
        return int(self.config.get("hidden_size") or self.config.get("dim") or 0)


def _json(files: dict[str, bytes], name: str) -> Any:
    try:
        return json.loads(files[name])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArtifact(f"{name} is not valid JSON") from exc


def _check_pooling(files: dict[str, bytes]) -> None:
    if "1_Pooling/config.json" not in files:
        return
    pooling = _json(files, "1_Pooling/config.json")
    modes = (
        {k: v for k, v in pooling.items() if k.startswith("pooling_mode_")}
        if isinstance(pooling, dict)
        else {}
    )
    if not modes.get("pooling_mode_mean_tokens") or any(
        v for k, v in modes.items() if k != "pooling_mode_mean_tokens"
    ):
        raise InvalidArtifact("only mean pooling is supported (1_Pooling/config.json)")


def check_safetensors_header(data: bytes) -> dict[str, Any]:
    """Parse a whole safetensors file's header (no tensor is materialised)."""
    return read_header(data[: 8 + MAX_HEADER_BYTES], len(data))


def _max_seq(files: dict[str, bytes], config: dict[str, Any]) -> int:
    limit = int(config.get("max_position_embeddings") or 512)
    if "sentence_bert_config.json" in files:
        st = _json(files, "sentence_bert_config.json")
        value = st.get("max_seq_length") if isinstance(st, dict) else None
        if isinstance(value, int) and value > 0:
            return min(value, limit)
    return min(DEFAULT_MAX_SEQ, limit)


def open_bundle(source: Source, limits: ArtifactLimits, weights: bool = True) -> EncoderBundle:
    """The bundle, checked: config.json bounded before anything is built, the weights' header
    agreeing with it. Without `weights` (validation) model.safetensors is read through and only
    its header kept, and members nothing reads are not kept at all."""
    keep = Keep(caps=_CAPS)
    if not weights:
        keep = Keep(only=_VALIDATED, prefixes=_HEADERS_ONLY, caps=_CAPS)
    bundle = read_bundle(source, limits, keep)
    files = bundle.files
    missing = [n for n in REQUIRED if n not in bundle.sizes]
    if missing:
        raise InvalidArtifact(f"hf-encoder bundle lacks {', '.join(missing)}")
    config = _json(files, "config.json")
    shape = sizes(config, limits)
    _check_pooling(files)
    header = read_header(files["model.safetensors"], bundle.sizes["model.safetensors"])
    check_weights(header, shape, limits)
    head = _check_head(bundle, shape.hidden)
    return EncoderBundle(files, config, _max_seq(files, config), head, _check_quant(bundle))


def _check_quant(bundle: Bundle) -> str | None:
    if QUANT_CONFIG not in bundle.sizes:
        return None
    quant = _json(bundle.files, QUANT_CONFIG)
    scheme = quant.get("scheme") if isinstance(quant, dict) else None
    if scheme not in QUANT_SCHEMES:
        raise InvalidArtifact(f"{QUANT_CONFIG}: scheme must be one of {', '.join(QUANT_SCHEMES)}")
    return str(scheme)


def _check_head(bundle: Bundle, hidden: int) -> dict[str, Any] | None:
    files = bundle.files
    if HEAD_CONFIG not in bundle.sizes and HEAD_WEIGHTS not in bundle.sizes:
        return None
    if HEAD_CONFIG not in bundle.sizes or HEAD_WEIGHTS not in bundle.sizes:
        raise InvalidArtifact(f"a head needs both {HEAD_CONFIG} and {HEAD_WEIGHTS}")
    head = _json(files, HEAD_CONFIG)
    k = head.get("num_outputs") if isinstance(head, dict) else None
    if not isinstance(head, dict) or head.get("task") not in HEAD_TASKS:
        raise InvalidArtifact(f"{HEAD_CONFIG}: task must be one of {', '.join(HEAD_TASKS)}")
    if not isinstance(k, int) or not 0 < k <= 100_000:
        raise InvalidArtifact(f"{HEAD_CONFIG}: num_outputs must be a positive integer")
    header = read_header(files[HEAD_WEIGHTS], bundle.sizes[HEAD_WEIGHTS])
    shapes = {n: m.get("shape") for n, m in header.items() if n != "__metadata__"}
    if shapes != {"weight": [k, hidden], "bias": [k]}:
        raise InvalidArtifact(f"{HEAD_WEIGHTS} must hold weight [{k}, {hidden}] and bias [{k}] only")
    return {"task": head["task"], "num_outputs": k}


def encoder_signature(hidden_size: int) -> Signature:
    return Signature.model_validate(
        {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, hidden_size]}],
        }
    )


def bundle_signature(bundle: EncoderBundle) -> Signature:
    """What the bundle's runner answers: embeddings, or the head's outputs."""
    if bundle.head is None:
        return encoder_signature(bundle.hidden_size)
    return head_signature(bundle.head["task"], bundle.head["num_outputs"])


def head_signature(task: str, k: int) -> Signature:
    names = ["logits", "probabilities"] if task == "classification" else ["prediction"]
    return Signature.model_validate(
        {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, k]} for n in names],
        }
    )


def validate_hf_encoder(source: Source, given: Signature | None, limits: ArtifactLimits) -> Signature:
    bundle = open_bundle(source, limits, weights=False)
    try:
        from tokenizers import Tokenizer

        Tokenizer.from_str(bundle.files["tokenizer.json"].decode("utf-8"))
    except Exception as exc:
        raise InvalidArtifact("tokenizer.json is not a valid tokenizer") from exc
    sig = bundle_signature(bundle)
    if given is not None and given != sig:
        raise InvalidArtifact(f"an hf-encoder's signature is fixed: {sig.model_dump(mode='json')}")
    return sig
