"""Loading a version as it serves and comparing two of them, inside the fenced compression child.

A `Served` model is the version loaded the way a worker runs it (TorchScript, ONNX Runtime, or an
hf-encoder through workers/common/hf_model.py, int8 included) with a function from a batch of rows
(numbers or texts) to its first output. `compare` measures a parent and its compressed child on
the same hardware in the same process: artifact bytes, latency p50 at batch 1 and 32 (warm-up
calls untimed, several timed rounds alternating the two models on the same input, the median),
the validation metric when there are labelled rows, and how far the outputs are apart.
"""

from __future__ import annotations

import functools
import io
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from model_store.hf_encoder import open_bundle
from model_store.signature import Signature
from workers.common.hf_model import build_encoder, embed, load_head, make_tokenizer, tokenize
from workers.contract.compress_spec import (
    LATENCY_MAX_CALLS,
    LATENCY_RUNS,
    LATENCY_TIMED_S,
    LATENCY_WARMUP,
    LATENCY_WARMUP_S,
)
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


Clock = Callable[[], float]  # seconds, monotonic


def latencies_ms(
    models: Sequence[Served], rows: Any, batch: int, runs: int, clock: Clock = time.perf_counter
) -> list[float]:
    """The median latency (ms) of each model on the same rows at one batch size. Each model's
    input is prepared once, outside the clock. Each model is warmed up first with untimed calls
    (at least LATENCY_WARMUP of them and LATENCY_WARMUP_S seconds). Then timed rounds call the
    models in turn (at least `runs` rounds and LATENCY_TIMED_S seconds), so that the machine's
    load drifting during the measurement falls on every model alike. Threads: the process's
    (torch's, and ONNX Runtime's, which load_served sets from torch's), the same for every model."""
    inputs = [model.prepare(_batch(rows, batch)) for model in models]
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for model, x in zip(models, inputs, strict=True):
            _repeat(functools.partial(model.run, x), LATENCY_WARMUP, LATENCY_WARMUP_S, clock)

        def one_round() -> None:
            for model, x, spent in zip(models, inputs, times, strict=True):
                t0 = clock()
                model.run(x)
                spent.append((clock() - t0) * 1000)

        _repeat(one_round, runs, LATENCY_TIMED_S, clock)
    return [round(statistics.median(t), 3) for t in times]


def _repeat(call: Callable[[], Any], at_least: int, seconds: float, clock: Clock) -> None:
    """`call` at least `at_least` times and until `seconds` have passed (LATENCY_MAX_CALLS at most)."""
    start = clock()
    for n in range(1, LATENCY_MAX_CALLS + 1):
        call()
        if n >= at_least and clock() - start >= seconds:
            return


def outputs(model: Served, rows: Any, chunk: int = 32) -> torch.Tensor:
    with torch.inference_mode():
        parts = [model.run(model.prepare(rows[i : i + chunk])).float() for i in range(0, len(rows), chunk)]
    return torch.cat(parts)


def compare_latency(
    parent: Served, result: Served, rows: Any, clock: Clock = time.perf_counter
) -> tuple[dict[str, float], dict[str, float]]:
    """Latency p50 (ms) at batch 1 and 32 of the parent and the result, measured together
    (latencies_ms): (the parent's, the result's)."""
    out: tuple[dict[str, float], dict[str, float]] = ({}, {})
    for batch, runs in zip((1, 32), LATENCY_RUNS, strict=True):
        p50 = latencies_ms([parent, result], rows, batch, runs, clock)
        for side, value in zip(out, p50, strict=True):
            side[f"p50_batch_{batch}"] = value
    return out


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
