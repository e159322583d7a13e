"""The fenced side of a compression job: everything that runs the tenant's model code.

Runs only inside a fenced child (started by workers/finetune/compress_job.py through
workers/finetune/fence.py), like a fine-tune's training child: it reads the parent version's blob,
the student's and the dataset files, and writes only its $TMPDIR. It compresses (methods in
compress_methods.py and compress_train.py), loads parent and result as a worker would and measures
both on this hardware (compress_measure.py), writes the result's artifact and sends one
`compressed` message (workers/contract/compress_messages.py) with the comparison.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_store.channel import Channel
from model_store.hf_encoder import open_bundle
from model_store.limits import ArtifactLimits
from model_store.registry import ResolvedVersion
from workers.common.hf_model import build_encoder, tar_files
from workers.contract.compress_spec import (
    CompressSpec,
    DistillParams,
    ExportParams,
    PruneParams,
    QuantizeParams,
)
from workers.contract.datasets import Dataset
from workers.contract.finetune_messages import VERSION
from workers.contract.finetune_spec import Hyperparameters, JobSpec
from workers.finetune import compress_measure as measure
from workers.finetune import compress_methods as methods
from workers.finetune import compress_train as training
from workers.finetune.build import build
from workers.finetune.child import READABLE, _dataset, die_with_parent, read_checked, resolved
from workers.finetune.errors import describe_error

RESULT_NAME = "compressed.bin"
Data = tuple[Dataset | None, Dataset | None]
Student = tuple[ResolvedVersion, bytes] | None


class NotCompressible(Exception):
    """The method does not apply to this version, or its result fails its check."""


def _send(channel: Channel, kind: str, buffers: list[bytes] | None = None, /, **body: Any) -> None:
    channel.send({"v": VERSION, "type": kind, **body}, buffers or [])


def compress_main(channel: Channel, args: dict[str, Any]) -> None:
    die_with_parent(channel)
    try:
        _compress(channel, args)
    except Exception as exc:
        _send(channel, "error", **describe_error(exc, (*READABLE, NotCompressible)))


def _compress(channel: Channel, args: dict[str, Any]) -> None:
    spec = CompressSpec.model_validate(args["spec"])
    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    seed = int(args["seed"])
    base, data = resolved(args["base"]), read_checked(args["base"])
    train = _dataset(args["train"]) if args.get("train") else None
    valid = _dataset(args["valid"]) if args.get("valid") else None

    def hook(row: dict[str, Any]) -> None:
        _send(channel, "step", row=row, seconds=0.0)

    parent = measure.load_served(base.format, data, base.signature, None)
    if args.get("student"):
        student: Student = (resolved(args["student"]), read_checked(args["student"]))
    else:
        student = None
    result = _run_method(spec, (base, data), (train, valid), seed, hook, (parent, student))
    tokens = parent.prepare if result.text_tokens else None
    child = measure.load_served(result.format, result.data, result.sig, tokens)
    comparison, table = compare(parent, child, (base, data, result), valid, seed)
    params = spec.typed()
    if isinstance(params, ExportParams) and comparison.get("max_abs_diff", 0.0) > params.tolerance:
        raise NotCompressible(
            f"the export differs from its source by {comparison['max_abs_diff']:.3g} "
            f"(more than the tolerance {params.tolerance:g})"
        )
    (Path(os.environ["TMPDIR"]) / RESULT_NAME).write_bytes(result.data)
    _send(
        channel,
        "compressed",
        [json.dumps(table).encode()],
        format=result.format,
        signature=result.sig.model_dump(mode="json"),
        artifact=RESULT_NAME,
        comparison=comparison,
        metrics=result.metrics,
    )


def _run_method(
    spec: CompressSpec,
    source: tuple[ResolvedVersion, bytes],
    datasets: Data,
    seed: int,
    hook: training.StepHook,
    loaded: tuple[measure.Served, Student],
) -> methods.Compressed:
    params = spec.typed()
    base, data = source
    parent, student = loaded
    if isinstance(params, QuantizeParams):
        return _quantize(base, data, params)
    if isinstance(params, ExportParams):
        if base.format == "torchscript":
            return methods.export_torchscript(data, base.signature, params.opset)
        if base.format == "hf-encoder":
            return methods.export_hf(data, params.opset, parent.prepare)
        raise NotCompressible(f"{base.format} versions cannot be exported to ONNX")
    if isinstance(params, PruneParams):
        return _prune(base, data, params, datasets, seed, hook)
    assert isinstance(params, DistillParams)
    return _distill(source, student, params, datasets, seed, hook)


def _quantize(base: ResolvedVersion, data: bytes, params: QuantizeParams) -> methods.Compressed:
    if base.format == "hf-encoder":
        scheme = (
            "fp16" if params.dtype == "fp16" else "dynamic-int8" + ("-all" if params.feed_forward else "")
        )
        return methods.quantize_hf(data, scheme)
    if params.dtype == "fp16":
        raise NotCompressible("fp16 weights apply to hf-encoder versions")
    if base.format == "torchscript":
        exported = methods.export_torchscript(data, base.signature, ExportParams().opset)
        return methods.quantize_onnx(exported.data, base.signature)
    return methods.quantize_onnx(data, base.signature)


def _prune(
    base: ResolvedVersion,
    data: bytes,
    params: PruneParams,
    datasets: Data,
    seed: int,
    hook: training.StepHook,
) -> methods.Compressed:
    if base.format == "onnx":
        raise NotCompressible("ONNX versions cannot be pruned; prune the TorchScript or hf-encoder source")
    train, valid = datasets
    if base.format == "hf-encoder" and params.fine_tune is None:
        return _prune_encoder(data, params)
    hp = params.fine_tune or Hyperparameters()
    spec = JobSpec(task="classification", hyperparameters=hp)
    sets = [d for d in (train, valid) if d is not None]
    built = build(base, data, spec, sets, torch.device("cpu"), seed)
    metrics = training.prune_and_tune(built, params, (train, valid), seed, hook)
    out, fmt = built.export(built.module)
    return methods.Compressed(out, fmt, built.sig, metrics)


def _prune_encoder(data: bytes, params: PruneParams) -> methods.Compressed:
    from safetensors.torch import save

    bundle = open_bundle(io.BytesIO(data), ArtifactLimits())
    encoder, _ = build_encoder(bundle, serve=False)
    found = training.masks(encoder, params)
    training.apply_masks(encoder, found)
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    files = {**bundle.files, "model.safetensors": save(state, metadata={"format": "pt"})}
    metrics = {"sparsity": training.sparsity(encoder, found), "pruned_tensors": len(found)}
    return methods.Compressed(tar_files(files), "hf-encoder", methods._bundle_sig(bundle), metrics)


def _distill(
    source: tuple[ResolvedVersion, bytes],
    given: Student,
    params: DistillParams,
    datasets: Data,
    seed: int,
    hook: training.StepHook,
) -> methods.Compressed:
    base, data = source
    train, valid = datasets
    if train is None:
        raise NotCompressible("distillation needs a training file")
    spec = JobSpec(task="classification", hyperparameters=params.hyperparameters)
    sets = [d for d in (train, valid) if d is not None]
    teacher = build(base, data, spec, sets, torch.device("cpu"), seed)
    if params.student_layers is not None:
        if base.format != "hf-encoder":
            raise NotCompressible("a student made of the teacher's layers needs an hf-encoder teacher")
        s_ref, s_data = base, training.student_bundle(data, params.student_layers, params.layer_choice)
    elif given is not None:
        s_ref, s_data = given
    else:
        raise NotCompressible("distillation needs a student version or student_layers")
    student = build(s_ref, s_data, spec, sets, torch.device("cpu"), seed)
    training.distill(teacher, student, train, params, seed, hook)
    out, fmt = student.export(student.module)
    return methods.Compressed(out, fmt, student.sig, {})


def compare(
    parent: measure.Served,
    child: measure.Served,
    versions: tuple[ResolvedVersion, bytes, methods.Compressed],
    valid: Dataset | None,
    seed: int,
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Parent vs result on this hardware: bytes, latency p50 at batch 1 and 32, closeness of their
    outputs, the validation accuracy; and the per-row table for the results file."""
    base, data, result = versions
    rows = measure.sample_rows(base.signature, parent.text, valid, seed)
    parent_ms, result_ms = measure.compare_latency(parent, child, rows)
    out: dict[str, Any] = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "rows": len(rows),
        "parent": {"bytes": len(data), "latency_ms": parent_ms},
        "result": {"bytes": len(result.data), "latency_ms": result_ms},
    }
    out["size_ratio"] = round(len(result.data) / max(1, len(data)), 4)
    a, b = measure.outputs(parent, rows), measure.outputs(child, rows)
    out.update(measure.closeness(a, b))
    table: dict[str, list[Any]] = {"lines": [], "labels": [], "predicted": [], "parent_predicted": []}
    if valid is not None and measure.classifies(a, valid) and measure.classifies(b, valid):
        out["parent"]["accuracy"] = measure.accuracy(a, valid.labels)
        out["result"]["accuracy"] = measure.accuracy(b, valid.labels)
        table = {
            "lines": list(valid.lines),
            "labels": np.asarray(valid.labels).astype(int).tolist(),
            "predicted": b.argmax(dim=1).tolist(),
            "parent_predicted": a.argmax(dim=1).tolist(),
        }
    return out, table
