"""The `lora-adapter` format: a LoRA adapter trained on (and served on) a base version.

An adapter version is a small bundle (tar or zip, read like every bundle: model_store/bundles.py)
of exactly two members, never pickle:

- `adapter_config.json`: {"peft_type": "LORA", "r": rank, "lora_alpha": alpha,
  "lora_dropout": p, "target_modules": [module-name suffixes], "base_format": "hf-causal-lm" or
  "hf-encoder", "task": "causal-lm" | "classification" | "regression",
  "head": null or {"num_outputs": K}} (unknown keys are refused);
- `adapter_model.safetensors`: for every adapted linear layer `<path>.lora_A.weight` [r, in] and
  `<path>.lora_B.weight` [out, r], `<path>` the layer's name in the base model as modelkiln
  builds it (hf-causal-lm: transformers' AutoModelForCausalLM, e.g.
  `model.layers.0.self_attn.q_proj`; hf-encoder: workers/common/hf_model.EncoderWithHead, e.g.
  `encoder.encoder.layer.0.attention.self.query`); an encoder adapter with a task head also holds
  `head.weight` [K, hidden] and `head.bias` [K]. The update of a layer is
  `x @ A.T @ B.T * lora_alpha / r`.

Which base an adapter belongs to is the version's lineage (`adapter_of`: the base's version id),
set by the trainer that made it; the registry hands it on as `ResolvedVersion.adapter_of`.
This module only reads headers (stdlib): the gateway validates adapters without torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from model_store.bundles import Keep, Source, read_bundle
from model_store.errors import InvalidArtifact
from model_store.hf_config import MAX_HEADER_BYTES, read_header
from model_store.limits import ArtifactLimits
from model_store.signature import Signature

FORMAT = "lora-adapter"
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
MAX_RANK = 256
MAX_CONFIG_BYTES = 64 << 10
BASE_FORMATS = ("hf-causal-lm", "hf-encoder")
TASKS = ("causal-lm", "classification", "regression")
_KEYS = {"peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "base_format", "task", "head"}
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_TENSOR = re.compile(r"^((?:[A-Za-z0-9_]{1,64}\.){1,16})lora_([AB])\.weight$")
_FLOAT_DTYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: tuple[str, ...]
    base_format: str
    task: str
    head_outputs: int | None  # an encoder adapter's task head: its outputs

    @property
    def scale(self) -> float:
        return self.lora_alpha / self.r

    def to_json(self) -> dict[str, Any]:
        return {
            "peft_type": "LORA",
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": list(self.target_modules),
            "base_format": self.base_format,
            "task": self.task,
            "head": None if self.head_outputs is None else {"num_outputs": self.head_outputs},
        }


def parse_config(raw: bytes) -> AdapterConfig:
    """adapter_config.json, checked: every field typed and bounded, nothing unknown."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidArtifact(f"{CONFIG} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        d = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidArtifact(f"{CONFIG} is not valid JSON") from exc
    if not isinstance(d, dict):
        raise InvalidArtifact(f"{CONFIG} must be a JSON object")
    unknown = sorted(set(d) - _KEYS)
    if unknown:
        raise InvalidArtifact(f"{CONFIG}: unknown field {unknown[0][:40]!r}")
    if d.get("peft_type") != "LORA":
        raise InvalidArtifact(f"{CONFIG}: peft_type must be 'LORA'")
    r: Any = d.get("r")
    alpha: Any = d.get("lora_alpha")
    dropout: Any = d.get("lora_dropout", 0.0)
    if not (isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= MAX_RANK):
        raise InvalidArtifact(f"{CONFIG}: r must be an integer from 1 to {MAX_RANK}")
    if not (_number(alpha) and 0 < alpha <= 1e4):
        raise InvalidArtifact(f"{CONFIG}: lora_alpha must be a number in (0, 10000]")
    if not (_number(dropout) and 0 <= dropout < 1):
        raise InvalidArtifact(f"{CONFIG}: lora_dropout must be a number in [0, 1)")
    targets = d.get("target_modules")
    if not (isinstance(targets, list) and 0 < len(targets) <= 32 and all(_is_module(t) for t in targets)):
        raise InvalidArtifact(f"{CONFIG}: target_modules must be 1 to 32 module names")
    if d.get("base_format") not in BASE_FORMATS:
        raise InvalidArtifact(f"{CONFIG}: base_format must be one of {', '.join(BASE_FORMATS)}")
    if d.get("task") not in TASKS:
        raise InvalidArtifact(f"{CONFIG}: task must be one of {', '.join(TASKS)}")
    return AdapterConfig(
        r, float(alpha), float(dropout), tuple(targets), d["base_format"], d["task"], _head(d.get("head"))
    )


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v


def _is_module(name: Any) -> bool:
    return isinstance(name, str) and bool(_MODULE.match(name))


def _head(head: Any) -> int | None:
    if head is None:
        return None
    k = head.get("num_outputs") if isinstance(head, dict) and set(head) == {"num_outputs"} else None
    if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 100_000):
        raise InvalidArtifact(f"{CONFIG}: head must be null or {{'num_outputs': 1..100000}}")
    return k


def check_tensors(header: dict[str, Any], config: AdapterConfig) -> dict[str, tuple[int, int]]:
    """The adapted layers, `<path>` -> (in, out) features, from the weights' header: every tensor
    is a LoRA A or B of a targeted module (or the head), float, of rank r, in pairs."""
    shapes: dict[str, dict[str, list[int]]] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta.get("dtype") not in _FLOAT_DTYPES:
            raise InvalidArtifact(f"{WEIGHTS}: tensor {name[:64]!r} is not a float tensor")
        if name in ("head.weight", "head.bias"):
            if config.head_outputs is None:
                raise InvalidArtifact(f"{WEIGHTS}: a head tensor in an adapter without a head")
            continue
        m = _TENSOR.match(name)
        if m is None:
            raise InvalidArtifact(f"{WEIGHTS}: tensor {name[:64]!r} is not a LoRA A or B weight")
        path = m.group(1)[:-1]
        if path.rsplit(".", 1)[-1] not in config.target_modules:
            raise InvalidArtifact(f"{WEIGHTS}: layer {path[:64]!r} is not in target_modules")
        shapes.setdefault(path, {})[m.group(2)] = list(meta.get("shape") or [])
    layers: dict[str, tuple[int, int]] = {}
    for path, pair in shapes.items():
        a, b = pair.get("A"), pair.get("B")
        if a is None or b is None or len(a) != 2 or len(b) != 2 or a[0] != config.r or b[1] != config.r:
            raise InvalidArtifact(f"{WEIGHTS}: layer {path[:64]!r} lacks a rank-{config.r} A/B pair")
        layers[path] = (a[1], b[0])
    if not layers:
        raise InvalidArtifact(f"{WEIGHTS} holds no LoRA weights")
    if config.head_outputs is not None:
        _check_head(header, config.head_outputs)
    return layers


def _check_head(header: dict[str, Any], k: int) -> None:
    w, b = header.get("head.weight"), header.get("head.bias")
    if not (w and b and len(w.get("shape", [])) == 2 and w["shape"][0] == k and b.get("shape") == [k]):
        raise InvalidArtifact(f"{WEIGHTS}: the head must be head.weight [{k}, hidden] and head.bias [{k}]")


@dataclass(frozen=True, slots=True)
class AdapterBundle:
    config: AdapterConfig
    layers: dict[str, tuple[int, int]]  # adapted layer path -> (in, out) features
    weights: bytes | None  # adapter_model.safetensors (None when opened for validation only)


def open_adapter(source: Source, limits: ArtifactLimits, weights: bool = True) -> AdapterBundle:
    """Read and check an adapter bundle; with `weights`, keep the safetensors bytes."""
    keep = Keep(only={CONFIG, WEIGHTS}, prefixes={} if weights else {WEIGHTS: 8 + MAX_HEADER_BYTES})
    bundle = read_bundle(source, limits, keep)
    names = set(bundle.sizes)
    if names != {CONFIG, WEIGHTS}:
        extra = sorted(names - {CONFIG, WEIGHTS}) or sorted({CONFIG, WEIGHTS} - names)
        raise InvalidArtifact(
            f"an adapter bundle holds exactly {CONFIG} and {WEIGHTS} (not {extra[0][:64]!r})"
        )
    config = parse_config(bundle.files[CONFIG])
    header = read_header(bundle.files[WEIGHTS], bundle.sizes[WEIGHTS])
    layers = check_tensors(header, config)
    return AdapterBundle(config, layers, bundle.files[WEIGHTS] if weights else None)


def validate_lora_adapter(source: Source, given: Signature | None, limits: ArtifactLimits) -> Signature:
    """An adapter's own checks; its signature is the one given (the trainer's: its base's, or the
    head's), since an adapter alone does not say what its base serves."""
    open_adapter(source, limits, weights=False)
    if given is None:
        raise InvalidArtifact("a lora-adapter is registered with its signature (by the trainer that made it)")
    return given
