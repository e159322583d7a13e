"""Prune and distill, inside the fenced compression child (workers/finetune/compress_child.py).

Prune: magnitude masks (torch.nn.utils.prune's L1 unstructured / L2 structured over output rows)
on every 2-D linear weight but the head and the embeddings, applied to the weights (permanent:
the zeros are in the stored artifact); an optional fine-tune (the fine-tune loop of
workers/finetune/training.py) re-applies the masks after every step, so pruned weights stay zero.

Distill: the teacher's logits on the training rows are computed once; the student (a given version,
or the teacher's encoder keeping N layers, with the teacher's head) is trained on
alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * CE(student, labels).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F
from torch.nn.utils import prune

from model_store.hf_encoder import open_bundle
from model_store.limits import ArtifactLimits
from workers.common.hf_model import tar_files
from workers.contract.compress_spec import DistillParams, PruneParams
from workers.contract.datasets import Dataset
from workers.contract.finetune_spec import DEFAULT_VALIDATION_SPLIT, JobSpec
from workers.finetune.build import Built
from workers.finetune.model import first_output, head_prefix
from workers.finetune.training import Run, split, to_tensors

StepHook = Callable[[dict[str, Any]], None]


# prune ---------------------------------------------------------------------------------------------
def prunable(module: Any) -> list[tuple[str, torch.Tensor]]:
    params = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    head = head_prefix([n for n, _ in params])
    return [
        (n, p)
        for n, p in params
        if p.ndim == 2 and n.endswith("weight") and not n.startswith(head) and "embeddings" not in n
    ]


def masks(module: Any, params: PruneParams) -> dict[str, torch.Tensor]:
    """Magnitude masks to the target sparsity, per layer."""
    out: dict[str, torch.Tensor] = {}
    for name, w in prunable(module):
        method: Any
        if params.structure == "structured":
            method = prune.LnStructured(amount=params.sparsity, n=2, dim=0)
        else:
            method = prune.L1Unstructured(amount=params.sparsity)
        out[name] = method.compute_mask(w.detach(), torch.ones_like(w)).to(w.dtype)
    if not out:
        raise ValueError("the model has no linear weights to prune (besides its head)")
    return out


def apply_masks(module: Any, found: dict[str, torch.Tensor]) -> None:
    named = dict(module.named_parameters())
    with torch.no_grad():
        for name, mask in found.items():
            named[name].mul_(mask)


def sparsity(module: Any, found: dict[str, torch.Tensor]) -> float:
    named = dict(module.named_parameters())
    zeros = sum(int((named[n] == 0).sum()) for n in found)
    total = sum(named[n].numel() for n in found)
    return round(zeros / max(1, total), 4)


def prune_and_tune(
    built: Built,
    params: PruneParams,
    data: tuple[Dataset | None, Dataset | None],
    seed: int,
    on_step: StepHook,
) -> dict[str, Any]:
    """Prune `built.module` in place, then fine-tune it when asked; the result's metrics."""
    found = masks(built.module, params)
    apply_masks(built.module, found)
    train, valid = data
    hp = params.fine_tune
    if hp is not None and train is not None:
        if valid is None:  # the loop's validation rows (early stopping): a seeded split
            train, valid = split(train, DEFAULT_VALIDATION_SPLIT, seed)
        spec = JobSpec(task="classification", hyperparameters=hp)
        run = Run(built.module, built.sig, train, valid, spec, seed, torch.device("cpu"), built.encode)

        def hook(row: dict[str, Any]) -> None:
            apply_masks(built.module, found)
            on_step(row)

        while not run.done():
            run.train_epoch(hook)
        apply_masks(built.module, found)
    built.module.eval()
    return {"sparsity": sparsity(built.module, found), "pruned_tensors": len(found)}


# distill -------------------------------------------------------------------------------------------
def layer_subset(n_layers: int, keep: int, choice: str) -> list[int]:
    if keep >= n_layers:
        raise ValueError(f"the teacher has {n_layers} layers: a student keeps fewer")
    if choice == "first":
        return list(range(keep))
    return sorted({round(i * (n_layers - 1) / max(1, keep - 1)) for i in range(keep)}) if keep > 1 else [0]


def student_bundle(teacher: bytes, keep: int, choice: str) -> bytes:
    """The teacher's bundle with only `keep` of its encoder layers (renumbered), head included."""
    from safetensors.torch import load, save

    bundle = open_bundle(io.BytesIO(teacher), ArtifactLimits())
    config = dict(bundle.config)
    n_layers = int(config.get("num_hidden_layers") or 0)
    chosen = layer_subset(n_layers, keep, choice)
    renumber = {old: new for new, old in enumerate(chosen)}
    state: dict[str, torch.Tensor] = {}
    for name, t in load(bundle.files["model.safetensors"]).items():
        parts = name.split(".")
        idx = next((i for i, p in enumerate(parts[:-1]) if p == "layer" and parts[i + 1].isdigit()), None)
        if idx is None:
            state[name] = t
        elif int(parts[idx + 1]) in renumber:
            parts[idx + 1] = str(renumber[int(parts[idx + 1])])
            state[".".join(parts)] = t
    config["num_hidden_layers"] = keep
    files = dict(bundle.files)
    files["config.json"] = json.dumps(config).encode()
    files["model.safetensors"] = save(
        {k: v.contiguous() for k, v in state.items()}, metadata={"format": "pt"}
    )
    return tar_files(files)


def teacher_logits(teacher: Built, ds: Dataset) -> torch.Tensor:
    x, _ = to_tensors(ds, teacher.sig, True, torch.device("cpu"), teacher.encode)
    teacher.module.eval()
    with torch.no_grad():
        return torch.cat(
            [first_output(teacher.module, x[i : i + 32], teacher.sig) for i in range(0, len(x), 32)]
        )


def distill(
    teacher: Built, student: Built, train: Dataset, params: DistillParams, seed: int, on_step: StepHook
) -> None:
    """Train the student in place against the teacher's soft targets and the labels."""
    soft = teacher_logits(teacher, train)
    x, y = to_tensors(train, student.sig, True, torch.device("cpu"), student.encode)
    hp, t, alpha = params.hyperparameters, params.temperature, params.alpha
    module = student.module
    opt = torch.optim.AdamW(
        [p for p in module.parameters() if p.is_floating_point()],
        lr=hp.learning_rate,
        weight_decay=hp.weight_decay,
    )
    torch.manual_seed(seed)
    step = 0
    module.train()
    for epoch in range(1, hp.epochs + 1):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for start in range(0, len(order), hp.batch_size):
            idx = order[start : start + hp.batch_size]
            out = first_output(module, x[idx], student.sig)
            kd = F.kl_div(
                F.log_softmax(out / t, dim=1), F.softmax(soft[idx] / t, dim=1), reduction="batchmean"
            )
            loss = alpha * t * t * kd + (1 - alpha) * F.cross_entropy(out, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hp.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), hp.max_grad_norm)
            opt.step()
            step += 1
            value = float(loss.detach())
            on_step({"step": step, "epoch": epoch, "train_loss": value if math.isfinite(value) else -1.0})
    module.eval()
