"""Validation metrics computed with numpy, on the same predictions the results file reports.

Classification: accuracy, macro precision, recall and F1 (a class never predicted or never seen
scores 0, as scikit-learn's zero_division=0 does), ROC AUC (binary on the positive class; else
one-vs-rest, the macro mean over the classes present with both positives and negatives), log loss.
Regression: R² (per output, then averaged; a constant target scores 1 if predicted exactly, else
0), MAE, RMSE (per output, then averaged). Language models: perplexity = exp(validation loss).
Each equals scikit-learn's on the same inputs (tests/unit/test_scores.py); scikit-learn is not a
runtime dependency.

`promote_metric` picks one of these for promotion and early stopping (the names, defaults and
directions are in workers/contract/finetune_spec.py, shared with the gateway).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from workers.contract.finetune_spec import HIGHER_IS_BETTER


def oriented(metric: str, value: float) -> float:
    """The value as a score where lower is better (so one comparison serves every metric)."""
    return -value if metric in HIGHER_IS_BETTER else value


def is_better(metric: str, new: dict[str, Any], old: dict[str, Any], min_delta: float = 0.0) -> bool:
    """Does `new` beat `old` on `metric` by more than min_delta? A missing value never wins."""
    if new.get(metric) is None:
        return False
    if old.get(metric) is None:
        return True
    return oriented(metric, float(new[metric])) < oriented(metric, float(old[metric])) - min_delta


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def classification(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """probs [n, k] (rows sum to 1), y [n] integer labels in [0, k)."""
    y = y.astype(np.int64)
    pred = probs.argmax(axis=1)
    labels = np.union1d(y, pred)
    tp = np.array([np.sum((pred == c) & (y == c)) for c in labels], dtype=np.float64)
    predicted = np.array([np.sum(pred == c) for c in labels], dtype=np.float64)
    actual = np.array([np.sum(y == c) for c in labels], dtype=np.float64)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, actual)
    f1 = _ratio(2 * tp, predicted + actual)
    out = {
        "accuracy": float(np.mean(pred == y)),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "log_loss": log_loss(probs, y),
    }
    auc = roc_auc(probs, y)
    if auc is not None:
        out["roc_auc"] = auc
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    safe = np.where(den > 0, den, 1.0)
    out: np.ndarray = np.where(den > 0, num / safe, 0.0)
    return out


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    eps = float(np.finfo(probs.dtype).eps)
    p = np.clip(probs[np.arange(len(y)), y], eps, 1 - eps)
    return float(-np.mean(np.log(p)))


def binary_auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """The area under the ROC curve (Mann-Whitney U with tied scores ranked by their mean)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(len(score), dtype=np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0  # 1-based mean rank of each tie group
    ranks[order] = np.repeat(mean_rank, counts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc(probs: np.ndarray, y: np.ndarray) -> float | None:
    """Binary: the positive class's probability. More classes: one-vs-rest, macro mean over
    the classes that have both positives and negatives here; None when there are none."""
    if probs.shape[1] == 2:
        return binary_auc(probs[:, 1], y == 1)
    per_class = [binary_auc(probs[:, c], y == c) for c in range(probs.shape[1])]
    found = [a for a in per_class if a is not None]
    return float(np.mean(found)) if found else None


def regression(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """pred and y [n] or [n, outputs]: each output scored alone, then averaged."""
    pred = pred.reshape(len(pred), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    err = y - pred
    ss_res = (err**2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    perfect = ss_res == 0
    r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.where(perfect, 1.0, 0.0))
    return {
        "r2": float(r2.mean()),
        "mae": float(np.abs(err).mean(axis=0).mean()),
        "rmse": float(np.sqrt((err**2).mean(axis=0)).mean()),
    }


def perplexity(valid_loss: float) -> float:
    """exp(mean token cross-entropy); inf past what a float holds."""
    try:
        return math.exp(valid_loss)
    except OverflowError:
        return math.inf
