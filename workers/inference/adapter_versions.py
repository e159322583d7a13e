"""LoRA adapter versions (`lora-adapter`, model_store/lora_adapter.py) of hf-encoder bases on an
inference worker: what loading one checks and reads, before the model cache attaches it to its
base's loaded instances (model_cache.py).

An adapter version is served by the instances of its base version (lineage `adapter_of`): no
process of its own and no copy of the base. The worker reads the adapter's bytes from the blob
store, checks their sha256 and the bundle (it must be trained on an hf-encoder, and a head must
answer the outputs its signature names), and hands them to each base instance over its channel
(the fenced child cannot read the blob store). Each batch of the adapter then runs on a base
instance under that adapter (workers/inference/encoder_adapters.py).
"""

from __future__ import annotations

import io
from pathlib import Path

from model_store.errors import InvalidArtifact, StoreError
from model_store.hf_encoder import head_signature
from model_store.limits import ArtifactLimits
from model_store.lora_adapter import open_adapter
from model_store.registry import Registry, ResolvedVersion
from workers.contract.errors import LoadError
from workers.inference.lifecycle import warmup_inputs
from workers.inference.model_host import read_verified
from workers.inference.runtime import AdapterRef, AdapterRunner, Runner, run_adapter

ADAPTER_FORMAT = "lora-adapter"
ENCODER_FORMAT = "hf-encoder"


class NotServedHere(Exception):
    """An adapter of a base this loop does not serve (a text-generation model's)."""


def base_of(registry: Registry, adapter: ResolvedVersion) -> ResolvedVersion:
    """The base version an adapter version runs on (LoadError if it names none, or one that
    is gone or not an encoder; NotServedHere for a text-generation base)."""
    if adapter.adapter_of is None:
        raise LoadError("this lora-adapter version names no base version (lineage adapter_of)")
    try:
        base = registry.by_version_id(adapter.adapter_of)
    except StoreError as exc:
        raise LoadError("the base version of this lora-adapter no longer exists") from exc
    if base.format == "hf-causal-lm":
        raise NotServedHere(base.format)
    if base.format != ENCODER_FORMAT:
        raise LoadError(f"lora-adapters are served on hf-encoder bases here, not on {base.format}")
    return base


def read_adapter_bytes(path: Path, adapter: ResolvedVersion, limits: ArtifactLimits) -> bytes:
    """The adapter's bundle, its sha256 checked against the registry's, its config checked
    against the base format and its own signature (LoadError otherwise)."""
    data = read_verified(path, adapter.sha256)
    try:
        bundle = open_adapter(io.BytesIO(data), limits, weights=False)
    except InvalidArtifact as exc:
        raise LoadError(f"refused lora-adapter: {exc}") from exc
    cfg = bundle.config
    if cfg.base_format != ENCODER_FORMAT:
        raise LoadError(f"this adapter was trained on a {cfg.base_format} model, its base is an hf-encoder")
    outputs = [t.name for t in adapter.signature.outputs]
    if cfg.head_outputs is not None:
        want = head_signature(cfg.task, cfg.head_outputs)
        if adapter.signature != want:
            raise LoadError("the adapter's signature is not the one its task head answers")
    elif outputs != ["embedding"]:
        raise LoadError("an adapter without a head answers embeddings; its signature says otherwise")
    return data


def attach(runners: list[Runner], ref: AdapterRef, adapter: ResolvedVersion) -> None:
    """Load the adapter on every base instance and run it once (a mismatch with the base fails
    the load, not a request): LoadError if an instance cannot serve it."""
    for runner in runners:
        if not isinstance(runner, AdapterRunner):
            raise LoadError("this base model's runtime does not serve LoRA adapters")
        runner.add_adapter(ref.key, ref.data, ref.capacity)
        run_adapter(runner, warmup_inputs(adapter.signature), ref)
