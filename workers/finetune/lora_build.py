"""LoRA fine-tunes (peft): the model to train and its export as a `lora-adapter` version.

peft's `inject_adapter_in_model` puts LoRA layers into the model in place (module paths stay the
ones modelkiln builds), so the generic training loop trains them like any parameters: only the
LoRA A/B weights (and, for an encoder, the task head) are trainable, checkpointed and exported.
The export names tensors as the lora-adapter format does (model_store/lora_adapter.py), and the
serving side attaches them to the base already in memory (workers/common/lora.py).

hf-causal-lm: the base's tokenizer renders chat rows with its chat template, loss on assistant
tokens only (workers/finetune/chat_tokens.py); the module maps [N, 2, L] (ids, mask) to logits.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model_store.hf_causal_lm import causal_lm_signature
from model_store.lora_adapter import CONFIG, FORMAT, WEIGHTS
from model_store.registry import ResolvedVersion
from workers.common.hf_model import tar_files
from workers.common.lora import state_of
from workers.contract.datasets import Dataset
from workers.contract.finetune_spec import LoraSpec
from workers.finetune.model import ModelNotTrainable

# the attention projections, by the names architectures give them (Llama/Mistral/Qwen: q_proj...,
# BERT-likes: query/key/value, GPT-2: c_attn)
DEFAULT_TARGETS = (("q_proj", "k_proj", "v_proj", "o_proj"), ("query", "key", "value"), ("c_attn",))
MAX_TRAIN_TOKENS = 2048  # a training row's tokens at most (the context length, when smaller)


def target_modules(model: torch.nn.Module, lora: LoraSpec) -> list[str]:
    """The module names LoRA adapts: the spec's, else the first default set the model has."""
    leaves = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if lora.target_modules is not None:
        missing = sorted(set(lora.target_modules) - leaves)
        if missing:
            raise ModelNotTrainable(
                f"lora.target_modules: the model has no linear layer named {missing[0]!r} "
                f"(it has: {', '.join(sorted(leaves)[:12])})"
            )
        return list(lora.target_modules)
    for names in DEFAULT_TARGETS:
        found = [n for n in names if n in leaves]
        if found:
            return found
    raise ModelNotTrainable("no attention projection found for LoRA: give lora.target_modules")


def inject(model: torch.nn.Module, lora: LoraSpec) -> list[str]:
    """Put LoRA layers into `model` (in place); returns the targeted module names."""
    import peft

    targets = target_modules(model, lora)
    config = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # typed int by peft, used as a number
        lora_dropout=lora.dropout,
        target_modules=targets,
    )
    peft.inject_adapter_in_model(config, model)
    return targets


def lora_names(module: torch.nn.Module, extra_prefixes: tuple[str, ...] = ()) -> list[str]:
    """The parameters a LoRA fine-tune trains: the LoRA weights and any `extra_prefixes` (a head)."""
    return [
        n
        for n, _ in module.named_parameters()
        if ".lora_A." in n or ".lora_B." in n or (extra_prefixes and n.startswith(extra_prefixes))
    ]


def adapter_bundle(
    tensors: dict[str, torch.Tensor],
    lora: LoraSpec,
    targets: list[str],
    base_format: str,
    task: str,
    head: int | None,
) -> bytes:
    from safetensors.torch import save

    config = {
        "peft_type": "LORA",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": targets,
        "base_format": base_format,
        "task": task,
        "head": None if head is None else {"num_outputs": head},
    }
    return tar_files({CONFIG: json.dumps(config, sort_keys=True).encode(), WEIGHTS: save(tensors)})


# hf-encoder ----------------------------------------------------------------------------------------
def encoder_export(module: Any, lora: LoraSpec, targets: list[str], task: str) -> tuple[bytes, str]:
    """An EncoderWithHead with LoRA in its encoder -> a lora-adapter bundle carrying the head."""
    tensors = state_of(module)
    head = module.head
    tensors["head.weight"] = head.weight.detach().to("cpu", torch.float32).contiguous()
    tensors["head.bias"] = head.bias.detach().to("cpu", torch.float32).contiguous()
    k = int(head.weight.shape[0])
    return adapter_bundle(tensors, lora, targets, "hf-encoder", task, k), FORMAT


# hf-causal-lm --------------------------------------------------------------------------------------
class CausalLM(torch.nn.Module):
    """[N, 2, L] int64 (input ids, attention mask; right-padded) -> logits [N, L', vocab], L' the
    batch's longest row (the padding every row shares is dropped first)."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = max(1, int(x[:, 1].sum(dim=1).max())) if x.shape[0] else x.shape[2]
        ids, mask = x[:, 0, :width], x[:, 1, :width]
        return self.lm(input_ids=ids, attention_mask=mask, use_cache=False).logits


@dataclass(slots=True)
class CausalBuilt:
    module: CausalLM
    tokenizer: Any
    context_length: int
    targets: list[str]


def load_causal(
    base: ResolvedVersion, data: bytes, device: torch.device, lora: LoraSpec, convert_to: Path | None = None
) -> CausalBuilt:
    """The base (fp32, from its bundle or GGUF bytes) with LoRA layers injected, and its tokenizer.
    `convert_to`: a GGUF base's dequantised model is also written there as a bundle (for the
    conversion cache, model_store/conversions.py)."""
    loaded = _load_base(base, data, convert_to)
    lm = loaded.model  # fp32: loaded for the CPU (a GGUF is dequantised)
    for p in lm.parameters():
        p.requires_grad_(False)
    targets = inject(lm, lora)
    if getattr(lm.config, "use_cache", None) is not None:
        lm.config.use_cache = False
    module = CausalLM(lm).to(device)
    return CausalBuilt(module, loaded.tokenizer, loaded.context_length, targets)


def _load_base(base: ResolvedVersion, data: bytes, convert_to: Path | None) -> Any:
    """A bundle is parsed from the bytes (checked against their sha256 by the caller; nothing is
    written); a GGUF file goes through a temporary file (transformers reads it by path) and is
    dequantised."""
    from model_store.gguf_check import MAGIC
    from model_store.limits import ArtifactLimits
    from workers.common.causal_model import export_bundle, load_bundle, load_model

    if not data.startswith(MAGIC):
        return load_bundle(data, "cpu", ArtifactLimits())
    folder = Path(tempfile.mkdtemp(prefix="kiln-base-", dir=os.environ.get("TMPDIR")))
    path = folder / "base.bin"
    path.write_bytes(data)
    try:
        loaded = load_model(path, base.sha256, "cpu", ArtifactLimits())
    finally:
        path.unlink(missing_ok=True)
    if convert_to is not None:
        export_bundle(loaded, convert_to)
    return loaded


def causal_tensors(built: CausalBuilt, ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """A chat dataset as ([N, 2, L] ids + mask, [N, L] labels with -100 where no loss). A row
    longer than the context fails the job with its line (the dry run reports them all)."""
    from workers.finetune.chat_tokens import encode_rows

    if not ds.is_chat:
        raise ModelNotTrainable("an hf-causal-lm model is fine-tuned on a chat or prompt/completion dataset")
    max_len = min(built.context_length, MAX_TRAIN_TOKENS)
    enc, issues = encode_rows(built.tokenizer, list(ds.inputs), list(ds.lines), max_len)
    if issues:
        first = issues[0]
        raise ModelNotTrainable(f"line {first.line}: {first.field}: {first.message}")
    return torch.stack([enc.ids, enc.mask], dim=1), enc.labels


def causal_export(module: CausalLM, lora: LoraSpec, targets: list[str]) -> tuple[bytes, str]:
    return adapter_bundle(state_of(module.lm), lora, targets, "hf-causal-lm", "causal-lm", None), FORMAT


def causal_signature() -> Any:
    return causal_lm_signature()
