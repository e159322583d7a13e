"""Bounds on an hf-encoder's config.json and safetensors header, checked before anything is
built: a model is allocated from its config, so every size it names (vocabulary, layers, hidden
and intermediate sizes, heads, positions, token types, labels) is bounded here, and its estimated
parameter count is held to `ArtifactLimits.max_parameters`. The weights' header must agree.

BERT-family configs name their sizes two ways (DistilBERT: dim, n_layers, hidden_dim, n_heads);
`sizes()` reads either."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from model_store.errors import InvalidArtifact
from model_store.limits import ArtifactLimits

SUPPORTED_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet")
MAX_CONFIG_BYTES = 1 << 20  # config.json and the other small JSON members
MAX_HEADER_BYTES = 8 << 20  # a safetensors header (the JSON that names the tensors)
MAX_TENSORS = 65_536
# (names in config.json, upper bound); the first name is BERT's, the second DistilBERT's
_BOUNDS: dict[str, tuple[tuple[str, ...], int]] = {
    "vocab": (("vocab_size",), 1_000_000),
    "hidden": (("hidden_size", "dim"), 16_384),
    "layers": (("num_hidden_layers", "n_layers"), 128),
    "intermediate": (("intermediate_size", "hidden_dim"), 65_536),
    "heads": (("num_attention_heads", "n_heads"), 256),
    "positions": (("max_position_embeddings",), 65_536),
}
_OPTIONAL: dict[str, tuple[str, int, int]] = {  # name: (config key, default, upper bound)
    "types": ("type_vocab_size", 0, 1024),
    "buckets": ("relative_attention_num_buckets", 0, 4096),
    "labels": ("num_labels", 2, 100_000),
}
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass(frozen=True, slots=True)
class Sizes:
    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    positions: int
    types: int
    buckets: int

    def parameters(self) -> int:
        """Embeddings plus each layer's attention, feed-forward and two layer norms (BERT's shape)."""
        h, i = self.hidden, self.intermediate
        embeddings = (self.vocab + self.positions + self.types) * h + 2 * h + self.buckets * self.heads
        layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
        return embeddings + self.layers * layer


def _int(config: dict[str, Any], names: tuple[str, ...], default: int | None = None) -> int:
    for name in names:
        if name in config:
            value = config[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArtifact(f"config.json: {name} must be a non-negative integer")
            return value
    if default is None:
        raise InvalidArtifact(f"config.json needs {names[0]}")
    return default


def sizes(config: Any, limits: ArtifactLimits) -> Sizes:
    """The sizes config.json names, each bounded, and the estimated parameters within the limit."""
    if not isinstance(config, dict) or config.get("model_type") not in SUPPORTED_TYPES:
        raise InvalidArtifact(f"config.json: model_type must be one of {', '.join(SUPPORTED_TYPES)}")
    if "auto_map" in config:
        raise InvalidArtifact("config.json asks for remote code (auto_map); refused")
    found: dict[str, int] = {}
    for key, (names, bound) in _BOUNDS.items():
        found[key] = _int(config, names)
        if not 0 < found[key] <= bound:
            raise InvalidArtifact(f"config.json: {names[0]} must be between 1 and {bound}")
    for key, (name, default, bound) in _OPTIONAL.items():
        found[key] = _int(config, (name,), default)
        if found[key] > bound:
            raise InvalidArtifact(f"config.json: {name} must be at most {bound}")
    for labels in ("id2label", "label2id"):
        if len(config.get(labels) or ()) > _OPTIONAL["labels"][2]:
            raise InvalidArtifact(f"config.json: {labels} has too many entries")
    if found["hidden"] % found["heads"]:
        raise InvalidArtifact("config.json: hidden_size must be a multiple of num_attention_heads")
    del found["labels"]
    out = Sizes(**found)
    if out.parameters() > limits.max_parameters:
        raise InvalidArtifact(
            f"config.json describes about {out.parameters()} parameters; "
            f"the limit is {limits.max_parameters} (KILN_MAX_MODEL_PARAMETERS)"
        )
    return out


def read_header(prefix: bytes, size: int) -> dict[str, Any]:
    """The safetensors header from the file's first bytes (no tensor is read) and its real size:
    bounded, every tensor of a known dtype, its bytes matching its shape, inside the file."""
    if size < 8 or len(prefix) < 8:
        raise InvalidArtifact("safetensors file is truncated")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > min(size - 8, MAX_HEADER_BYTES) or len(prefix) < 8 + n:
        raise InvalidArtifact("safetensors file has an invalid or oversized header")
    try:
        header = json.loads(prefix[8 : 8 + n])
    except ValueError as exc:
        raise InvalidArtifact("safetensors file has an invalid header") from exc
    if not isinstance(header, dict) or not header or len(header) > MAX_TENSORS:
        raise InvalidArtifact("safetensors file holds no tensors, or too many")
    for name, meta in header.items():
        if name != "__metadata__":
            _check_tensor(name, meta, size - 8 - n)
    return header


def _check_tensor(name: str, meta: Any, data_bytes: int) -> None:
    meta = meta if isinstance(meta, dict) else {}
    offsets, shape, dtype = meta.get("data_offsets"), meta.get("shape"), meta.get("dtype")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise InvalidArtifact(f"safetensors: tensor {name[:64]!r} lies outside the file")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise InvalidArtifact(f"safetensors: tensor {name[:64]!r} has an invalid shape")
    count = 1
    for d in shape:
        count *= d
    if dtype not in _DTYPE_BYTES or count * _DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        raise InvalidArtifact(f"safetensors: tensor {name[:64]!r} does not match its dtype and shape")


def elements(header: dict[str, Any]) -> int:
    total = 0
    for name, meta in header.items():
        if name != "__metadata__":
            count = 1
            for d in meta["shape"]:
                count *= d
            total += count
    return total


def check_weights(header: dict[str, Any], s: Sizes, limits: ArtifactLimits) -> None:
    """The encoder's weights agree with its config: embedding shapes, parameter count."""
    if elements(header) > limits.max_parameters:
        raise InvalidArtifact(f"model.safetensors holds more than {limits.max_parameters} parameters")
    expected = {
        "word_embeddings.weight": [s.vocab, s.hidden],
        "position_embeddings.weight": [s.positions, s.hidden],
        "token_type_embeddings.weight": [s.types, s.hidden],
    }
    seen = set()
    for name, meta in header.items():
        for suffix, shape in expected.items():
            if name.endswith(suffix):
                seen.add(suffix)
                if meta["shape"] != shape:
                    raise InvalidArtifact(
                        f"model.safetensors: {name[:64]!r} is {meta['shape']}, config.json says {shape}"
                    )
    if "word_embeddings.weight" not in seen:
        raise InvalidArtifact("model.safetensors has no word embeddings (…word_embeddings.weight)")
