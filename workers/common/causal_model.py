"""An hf-causal-lm version's artifact to a model and its tokenizer (in a fenced child: the
generation host, or a LoRA fine-tune's trainer).

The blob's sha256 is checked before anything is parsed. A bundle is read in memory (never
extracted): the model is built from config.json (transformers' own classes, no remote code) and
takes its weights from safetensors bytes; the tokenizer from tokenizer.json with the special
tokens and chat template of tokenizer_config.json / chat_template.jinja. A GGUF file is checked
(model_store.gguf_check) and then read by transformers (`gguf_file=`), dequantised; its sha256
is checked again afterwards, since transformers reads it by path. Its dequantised model can be
exported as a bundle (export_bundle) for the conversion cache (model_store/conversions.py), which
later loads read instead (load_model on the cached file, or load_bundle on its checked bytes).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_store.gguf_check import is_gguf
from model_store.hf_causal_lm import CausalBundle, check_gguf, open_causal_bundle
from model_store.limits import ArtifactLimits
from workers.contract.errors import LoadError

_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass(slots=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    context_length: int
    eos_ids: list[int]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, sha256: str) -> None:
    try:
        actual = sha256_file(path)
    except FileNotFoundError as exc:
        raise LoadError("artifact bytes are missing from the store") from exc
    if actual != sha256:
        raise LoadError("artifact bytes do not match the sha256 recorded at registration")


def _dtype(device: str) -> Any:
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def load_model(path: Path, sha256: str, device: str, limits: ArtifactLimits) -> LoadedModel:
    """The version's model (eval mode, on `device`) and tokenizer, after its sha256 is checked."""
    verify(path, sha256)
    dtype = _dtype(device)
    if is_gguf(path):
        model, tokenizer = _from_gguf(path, dtype, limits)
        verify(path, sha256)
    else:
        model, tokenizer = _from_bundle(open_causal_bundle(path, limits), dtype)
    return _placed(model, tokenizer, device)


def load_bundle(data: bytes, device: str, limits: ArtifactLimits) -> LoadedModel:
    """A bundle's model and tokenizer from bytes the caller has already checked against their
    sha256 (a fine-tune child's base, or the cached conversion of a GGUF base): parsed in memory,
    nothing written to disk."""
    model, tokenizer = _from_bundle(open_causal_bundle(io.BytesIO(data), limits), _dtype(device))
    return _placed(model, tokenizer, device)


def _placed(model: Any, tokenizer: Any, device: str) -> LoadedModel:
    model = model.to(device).eval()
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if context <= 0:
        raise LoadError("the model's config names no context length (max_position_embeddings)")
    return LoadedModel(model, tokenizer, context, eos_ids(model, tokenizer))


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a sequence: the generation config's, the model config's, the tokenizer's."""
    found: list[int] = []
    for value in (
        getattr(model.generation_config, "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v >= 0 and v not in found:
                found.append(v)
    return found


def _from_gguf(path: Path, dtype: Any, limits: ArtifactLimits) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(path, limits)
    os.environ["HF_HUB_OFFLINE"] = "1"
    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    except (ValueError, KeyError, OSError, NotImplementedError) as exc:
        raise LoadError(f"the GGUF file could not be loaded: {str(exc)[:200]}") from exc
    return model, tokenizer


def _from_bundle(bundle: CausalBundle, dtype: Any) -> tuple[Any, Any]:
    import transformers
    from safetensors.torch import load as load_safetensors
    from transformers.initialization import no_init_weights

    config = transformers.AutoConfig.for_model(**bundle.config)
    with no_init_weights():  # every weight comes from the bundle (checked below): no random init
        model: Any = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    state: dict[str, Any] = {}
    for shard in bundle.shards:
        state.update(load_safetensors(bundle.files[shard]))
    missing, _unexpected = model.load_state_dict(state, strict=False)
    tied = {
        k for k in missing if k.endswith("lm_head.weight") and getattr(config, "tie_word_embeddings", False)
    }
    if [k for k in missing if k not in tied and not k.endswith("rotary_emb.inv_freq")]:
        raise LoadError("the weights lack tensors the config needs")
    model.tie_weights()
    if "generation_config.json" in bundle.files:
        model.generation_config = transformers.GenerationConfig.from_dict(
            json.loads(bundle.files["generation_config.json"])
        )
    return model, _tokenizer(bundle)


def _tokenizer(bundle: CausalBundle) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    files = bundle.files
    settings = json.loads(files["tokenizer_config.json"]) if "tokenizer_config.json" in files else {}
    if "special_tokens_map.json" in files:
        settings = {**json.loads(files["special_tokens_map.json"]), **settings}
    kwargs = {k: _token(settings.get(k)) for k in _SPECIAL if _token(settings.get(k)) is not None}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(files["tokenizer.json"].decode("utf-8")), **kwargs
    )
    template = settings.get("chat_template")
    if "chat_template.jinja" in files:
        template = files["chat_template.jinja"].decode("utf-8", errors="replace")
    if isinstance(template, str):
        tokenizer.chat_template = template
    return tokenizer


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken's dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def export_bundle(loaded: LoadedModel, dest: Path) -> None:
    """The loaded model as an hf-causal-lm bundle (a tar of config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json, generation_config.json): what a GGUF file becomes
    once dequantised, so that later loads skip the conversion. Read back like any uploaded bundle."""
    import tarfile

    from safetensors.torch import save_file

    model, tok = loaded.model, loaded.tokenizer
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    special = {k: getattr(tok, k) for k in _SPECIAL if isinstance(getattr(tok, k, None), str)}
    small = {
        "config.json": json.dumps(config).encode(),
        "tokenizer.json": tok.backend_tokenizer.to_str().encode(),
        "tokenizer_config.json": json.dumps({**special, "chat_template": tok.chat_template}).encode(),
        "generation_config.json": model.generation_config.to_json_string().encode(),
    }
    weights = dest.with_suffix(".safetensors")
    save_file(state, str(weights))
    with tarfile.open(dest, "w") as tar:
        for name, body in small.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        tar.add(str(weights), arcname="model.safetensors", recursive=False)
    weights.unlink()
