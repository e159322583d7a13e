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
import struct
from dataclasses import dataclass
from typing import Any

from model_store.bundles import read_bundle
from model_store.errors import InvalidArtifact
from model_store.signature import Signature

SUPPORTED_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet")
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")
MAX_UNPACKED = 8 << 30
DEFAULT_MAX_SEQ = 256
HEAD_CONFIG = "kiln_head.json"
HEAD_WEIGHTS = "kiln_head.safetensors"
HEAD_TASKS = ("classification", "regression")


@dataclass(frozen=True, slots=True)
class EncoderBundle:
    files: dict[str, bytes]
    config: dict[str, Any]
    max_seq_length: int
    head: dict[str, Any] | None = None  # the head config, when the bundle carries one

    @property
    def hidden_size(self) -> int:
        return int(self.config.get("hidden_size") or self.config.get("dim") or 0)


def _json(files: dict[str, bytes], name: str) -> Any:
    try:
        return json.loads(files[name])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArtifact(f"{name} is not valid JSON") from exc


def _check_config(config: Any) -> None:
    if not isinstance(config, dict) or config.get("model_type") not in SUPPORTED_TYPES:
        raise InvalidArtifact(f"config.json: model_type must be one of {', '.join(SUPPORTED_TYPES)}")
    if "auto_map" in config:
        raise InvalidArtifact("config.json asks for remote code (auto_map); refused")
    hidden = config.get("hidden_size") or config.get("dim")
    if not isinstance(hidden, int) or not 0 < hidden <= 65536:
        raise InvalidArtifact("config.json needs a positive integer hidden_size")


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
    """Parse the safetensors header (no tensor is materialised)."""
    if len(data) < 8:
        raise InvalidArtifact("model.safetensors is truncated")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, 100 << 20):
        raise InvalidArtifact("model.safetensors has an invalid header")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise InvalidArtifact("model.safetensors has an invalid header") from exc
    if not isinstance(header, dict) or not header:
        raise InvalidArtifact("model.safetensors holds no tensors")
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and 0 <= offsets[0] <= offsets[1] <= len(data) - 8 - n
        ):
            raise InvalidArtifact(f"model.safetensors: tensor {name[:64]!r} lies outside the file")
    return header


def _max_seq(files: dict[str, bytes], config: dict[str, Any]) -> int:
    limit = int(config.get("max_position_embeddings") or 512)
    if "sentence_bert_config.json" in files:
        st = _json(files, "sentence_bert_config.json")
        value = st.get("max_seq_length") if isinstance(st, dict) else None
        if isinstance(value, int) and value > 0:
            return min(value, limit)
    return min(DEFAULT_MAX_SEQ, limit)


def open_bundle(data: bytes) -> EncoderBundle:
    files = read_bundle(data, MAX_UNPACKED)
    missing = [n for n in REQUIRED if n not in files]
    if missing:
        raise InvalidArtifact(f"hf-encoder bundle lacks {', '.join(missing)}")
    config = _json(files, "config.json")
    _check_config(config)
    _check_pooling(files)
    check_safetensors_header(files["model.safetensors"])
    hidden = int(config.get("hidden_size") or config.get("dim"))
    return EncoderBundle(files, config, _max_seq(files, config), _check_head(files, hidden))


def _check_head(files: dict[str, bytes], hidden: int) -> dict[str, Any] | None:
    if HEAD_CONFIG not in files and HEAD_WEIGHTS not in files:
        return None
    if HEAD_CONFIG not in files or HEAD_WEIGHTS not in files:
        raise InvalidArtifact(f"a head needs both {HEAD_CONFIG} and {HEAD_WEIGHTS}")
    head = _json(files, HEAD_CONFIG)
    k = head.get("num_outputs") if isinstance(head, dict) else None
    if not isinstance(head, dict) or head.get("task") not in HEAD_TASKS:
        raise InvalidArtifact(f"{HEAD_CONFIG}: task must be one of {', '.join(HEAD_TASKS)}")
    if not isinstance(k, int) or not 0 < k <= 100_000:
        raise InvalidArtifact(f"{HEAD_CONFIG}: num_outputs must be a positive integer")
    header = check_safetensors_header(files[HEAD_WEIGHTS])
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


def validate_hf_encoder(data: bytes, given: Signature | None) -> Signature:
    bundle = open_bundle(data)
    try:
        from tokenizers import Tokenizer

        Tokenizer.from_str(bundle.files["tokenizer.json"].decode("utf-8"))
    except Exception as exc:
        raise InvalidArtifact("tokenizer.json is not a valid tokenizer") from exc
    sig = bundle_signature(bundle)
    if given is not None and given != sig:
        raise InvalidArtifact(f"an hf-encoder's signature is fixed: {sig.model_dump(mode='json')}")
    return sig
