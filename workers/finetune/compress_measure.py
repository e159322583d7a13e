"""Loading a version as it serves and comparing two of them, inside the fenced compression child.

A `Served` model is the version loaded the way a worker runs it (TorchScript, ONNX Runtime, or an
hf-encoder through workers/common/hf_model.py, int8 included) with a function from a batch of rows
(numbers or texts) to its first output. `compare` measures a parent and its compressed child on
the same hardware in the same process: artifact bytes, latency p50 at batch 1 and 32, the
validation metric when there are labelled rows, and how far the outputs are apart.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from model_store.hf_encoder import open_bundle
from model_store.signature import Signature
from workers.common.hf_model import build_encoder, embed, load_head, make_tokenizer, tokenize
from workers.contract.compress_spec import LATENCY_RUNS
from workers.contract.datasets import Dataset
from workers.finetune.model import first_output, load_scripted

SAMPLE_TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The quick brown fox jumps over the lazy dog.",
    "Redis Streams deliver each entry to one consumer of a group.",
    "The striker scored a late goal in the football match.",
    "The chef simmered garlic and tomatoes for the family dinner.",
    "Model serving with dynamic batching.",
    "Sentence embeddings are L2-normalised.",
    "A cat sleeps on the warm windowsill.",
    "The train to the airport leaves every ten minutes.",
    "Interest rates rose again this quarter.",
    "She planted tomatoes and basil in the garden.",
    "The orchestra tuned their instruments before the concert.",
    "Heavy rain flooded the streets of the old town.",
    "He fixed the bicycle's flat tyre in the garage.",
    "The museum opens a new exhibition on ancient maps.",
    "Children built a sandcastle on the beach.",
]


@dataclass(slots=True)
class Served:
    """A loaded version: rows -> model input (`prepare`) and model input -> first output (`run`)."""

    run: Callable[[Any], torch.Tensor]
    prepare: Callable[[Any], Any]
    text: bool


def _numeric(sig: Signature) -> Callable[[Any], torch.Tensor]:
    double = sig.inputs[0].datatype == "FP64"

    def prepare(rows: Any) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(rows))
        return x.double() if double else x.float()

    return prepare


def load_served(
    fmt: str, data: bytes, sig: Signature, text_tokens: Callable[[list[str]], Any] | None
) -> Served:
    """The version as a worker would run it, on CPU. An ONNX graph exported from an hf-encoder
    takes its tokens tensor: `text_tokens` (the source's tokenizer) turns texts into it."""
    if fmt == "torchscript":
        module = load_scripted(data, torch.device("cpu")).eval()
        return Served(lambda x: first_output(module, x, sig), _numeric(sig), False)
    if fmt == "onnx":
        return _onnx(data, sig, text_tokens)
    if fmt == "hf-encoder":
        return _hf(data)
    raise ValueError(f"no loader for format {fmt!r}")


def _onnx(data: bytes, sig: Signature, text_tokens: Callable[[list[str]], Any] | None) -> Served:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name

    def run(x: Any) -> torch.Tensor:
        arr = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return torch.from_numpy(np.asarray(sess.run([out], {name: arr})[0]))

    if text_tokens is not None:
        return Served(run, text_tokens, True)
    return Served(run, _numeric(sig), False)


def _hf(data: bytes) -> Served:
    bundle = open_bundle(io.BytesIO(data), _limits())
    encoder, wants_types = build_encoder(bundle)
    head = load_head(bundle)
    tokenizer = make_tokenizer(bundle)

    def run(x: torch.Tensor) -> torch.Tensor:
        emb = embed(encoder, wants_types, x)
        return head(emb) if head is not None else emb

    return Served(run, lambda texts: tokenize(tokenizer, [str(t) for t in texts]), True)


def _limits() -> Any:
    from model_store.limits import ArtifactLimits

    return ArtifactLimits()


def sample_rows(sig: Signature, text: bool, valid: Dataset | None, seed: int) -> Any:
    """Rows to compare and time on: the validation rows when given, else fixed samples."""
    if valid is not None and len(valid):
        return [str(t) for t in valid.inputs] if text else np.asarray(valid.inputs)
    if text:
        return list(SAMPLE_TEXTS)
    dims = tuple(1 if d == -1 else d for d in sig.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(size=(24, *dims)).astype(np.float32)


def _batch(rows: Any, n: int) -> Any:
    reps = -(-n // len(rows))
    if isinstance(rows, list):
        return (rows * reps)[:n]
    return np.concatenate([rows] * reps)[:n]


def p50_ms(model: Served, rows: Any, batch: int, runs: int) -> float:
    x = model.prepare(_batch(rows, batch))
    with torch.inference_mode():
        model.run(x)  # warm-up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model.run(x)
            times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 3)


def outputs(model: Served, rows: Any, chunk: int = 32) -> torch.Tensor:
    with torch.inference_mode():
        parts = [model.run(model.prepare(rows[i : i + chunk])).float() for i in range(0, len(rows), chunk)]
    return torch.cat(parts)


def side(model: Served, size: int, rows: Any) -> dict[str, Any]:
    runs1, runs32 = LATENCY_RUNS
    return {
        "bytes": size,
        "latency_ms": {
            "p50_batch_1": p50_ms(model, rows, 1, runs1),
            "p50_batch_32": p50_ms(model, rows, 32, runs32),
        },
    }


def closeness(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """How far two models' outputs on the same rows are apart."""
    if a.shape != b.shape:
        return {}
    cos = F.cosine_similarity(a.reshape(len(a), -1), b.reshape(len(b), -1), dim=1)
    return {
        "max_abs_diff": float((a - b).abs().max()) if a.numel() else 0.0,
        "cosine_min": round(float(cos.min()), 6) if len(cos) else 1.0,
        "cosine_mean": round(float(cos.mean()), 6) if len(cos) else 1.0,
    }


def accuracy(out: torch.Tensor, labels: np.ndarray) -> float:
    y = torch.as_tensor(labels.astype(np.int64))
    return float((out.argmax(dim=1) == y).float().mean())


def classifies(out: torch.Tensor, valid: Dataset | None) -> bool:
    """Whether `out` are class scores for the validation labels (a metric can be computed)."""
    if valid is None or out.ndim != 2 or valid.labels.ndim != 1:
        return False
    labels = valid.labels
    return bool(np.all(labels == np.round(labels)) and labels.min() >= 0 and labels.max() < out.shape[1])
