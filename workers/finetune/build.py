"""The seam where a fine-tune job's model is built and exported, per base format.

TorchScript: the scripted module itself (head = the module owning the last parameter), saved
again as TorchScript. hf-encoder: encoder + mean pooling + a linear head (workers/common/hf_model.py),
trained on tokenised text rows, exported as an hf-encoder bundle that carries the head. Both
train in the same loop (workers/finetune/training.py) with the same checkpoints, resume and metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model_store.hf_encoder import head_signature
from model_store.registry import ResolvedVersion
from model_store.signature import Signature
from workers.common.hf_model import Encode, export_bundle, for_finetune
from workers.contract.datasets import Dataset
from workers.contract.finetune_spec import JobSpec, LoraSpec
from workers.finetune import lora_build
from workers.finetune.model import load_scripted, resize_head, save_scripted, with_classes


@dataclass(slots=True)
class Built:
    module: Any
    sig: Signature  # the result's signature
    encode: Encode | None  # text rows -> input tensor (text models)
    export: Callable[[Any], tuple[bytes, str]]  # trained module -> (artifact bytes, format)
    # LoRA: the parameters trained (and checkpointed); None: the freeze list decides, all saved
    trainable: list[str] | None = None
    # rows -> (inputs, labels) for datasets `encode` does not cover (chat rows of a causal LM)
    tensors: Callable[[Dataset], tuple[torch.Tensor, torch.Tensor]] | None = None


def head_outputs(spec: JobSpec, base_sig: Signature, datasets: list[Dataset]) -> int:
    """Outputs of a new head: classification -> num_classes, else enough for every label seen (and
    the parent's classes when it already has a head); regression -> the labels' width."""
    if spec.task == "regression":
        labels = datasets[0].labels
        return 1 if labels.ndim == 1 else int(labels.shape[1])
    seen = max(int(ds.labels.max()) + 1 for ds in datasets)
    parent = int(base_sig.outputs[0].shape[-1]) if base_sig.outputs[0].name == "logits" else 0
    return max(2, seen, parent, spec.hyperparameters.num_classes or 0)


def build(
    base: ResolvedVersion,
    data: bytes,
    spec: JobSpec,
    datasets: list[Dataset],
    device: torch.device,
    seed: int,
    convert_to: Path | None = None,
) -> Built:
    """`convert_to`: where a GGUF base's dequantised model is also written as a bundle (the
    conversion cache, model_store/conversions.py); other bases ignore it."""
    if base.format == "hf-causal-lm":
        torch.manual_seed(seed)  # LoRA's A matrices start the same for the same seed
        return _causal_lm(base, data, spec, device, convert_to)
    if base.format == "hf-encoder":
        torch.manual_seed(seed)  # a new head starts the same for the same seed
        return _hf_encoder(base, data, spec, datasets, device)
    module = load_scripted(data, device)
    classes = spec.hyperparameters.num_classes
    if classes is not None:
        resize_head(module, classes)
    sig = with_classes(base.signature, classes)
    return Built(module, sig, None, lambda m: (save_scripted(m), "torchscript"))


def _hf_encoder(
    base: ResolvedVersion, data: bytes, spec: JobSpec, datasets: list[Dataset], device: torch.device
) -> Built:
    k = head_outputs(spec, base.signature, datasets)
    module, encode, bundle = for_finetune(data, device, spec.task, k)
    if int(module.head.weight.shape[0]) < k:
        resize_head(module, k)
    module.dropout = spec.hyperparameters.dropout
    task = spec.task
    lora = spec.hyperparameters.lora
    if lora is not None:
        targets = lora_build.inject(module.encoder, lora)
        module.to(device)
        return Built(
            module,
            head_signature(task, k),
            encode,
            lambda m: lora_build.encoder_export(m, lora, targets, task),
            trainable=lora_build.lora_names(module, ("head.",)),
        )
    return Built(
        module, head_signature(task, k), encode, lambda m: (export_bundle(m, bundle, task), "hf-encoder")
    )


def _causal_lm(
    base: ResolvedVersion, data: bytes, spec: JobSpec, device: torch.device, convert_to: Path | None
) -> Built:
    """A LoRA adapter on an hf-causal-lm base (its only way to be fine-tuned here)."""
    lora = spec.hyperparameters.lora or LoraSpec()
    built = lora_build.load_causal(base, data, device, lora, convert_to)
    targets = built.targets
    return Built(
        built.module,
        lora_build.causal_signature(),
        None,
        lambda m: lora_build.causal_export(m, lora, targets),
        trainable=lora_build.lora_names(built.module),
        tensors=lambda ds: lora_build.causal_tensors(built, ds),
    )
