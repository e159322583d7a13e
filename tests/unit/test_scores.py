"""Every validation metric the trainer reports equals scikit-learn's on the same predictions
(scikit-learn is only a test dependency here; the trainer computes them with numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from workers.finetune import scores


def _probs(rng: np.random.Generator, n: int, k: int, ties: bool = False) -> np.ndarray:
    logits = rng.normal(size=(n, k))
    if ties:  # coarse scores: many tied probabilities
        logits = np.round(logits)
    return scores.softmax(logits)


@pytest.mark.parametrize(("k", "ties", "seed"), [(2, False, 0), (2, True, 1), (3, False, 2), (5, True, 3)])
def test_classification_metrics_equal_sklearn(k: int, ties: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = _probs(rng, 97, k, ties)
    y = rng.integers(0, k, size=97)
    y[:k] = np.arange(k)  # every class present
    got = scores.classification(probs, y)
    pred = probs.argmax(axis=1)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    for name, fn in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        assert got[name] == pytest.approx(fn(y, pred, average="macro", zero_division=0)), name
    auc = sk.roc_auc_score(y, probs[:, 1]) if k == 2 else sk.roc_auc_score(y, probs, multi_class="ovr")
    assert got["roc_auc"] == pytest.approx(auc)
    assert got["log_loss"] == pytest.approx(sk.log_loss(y, probs, labels=list(range(k))))


def test_a_class_never_predicted_scores_zero_like_sklearn() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = scores.softmax(np.array([[3, 0, 0], [3, 0, 0], [0, 3, 0], [3, 0, 0], [0, 3, 0], [0, 3, 0.0]]))
    got = scores.classification(probs, y)
    pred = probs.argmax(axis=1)
    for name, fn in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        assert got[name] == pytest.approx(fn(y, pred, average="macro", zero_division=0)), name


def test_auc_is_absent_when_only_one_class_is_present() -> None:
    probs = scores.softmax(np.zeros((4, 2)))
    assert "roc_auc" not in scores.classification(probs, np.ones(4, dtype=np.int64))


@pytest.mark.parametrize("outputs", [1, 3])
def test_regression_metrics_equal_sklearn(outputs: int) -> None:
    rng = np.random.default_rng(outputs)
    y = rng.normal(size=(50, outputs))
    pred = y + rng.normal(scale=0.3, size=y.shape)
    got = scores.regression(pred, y)
    assert got["r2"] == pytest.approx(sk.r2_score(y, pred))
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(y, pred))
    assert got["rmse"] == pytest.approx(sk.root_mean_squared_error(y, pred))


def test_constant_target_r2_like_sklearn() -> None:
    y = np.ones(5)
    assert scores.regression(y.copy(), y)["r2"] == sk.r2_score(y, y.copy()) == 1.0
    assert scores.regression(y + 1, y)["r2"] == sk.r2_score(y, y + 1) == 0.0


def test_perplexity_and_directions() -> None:
    assert scores.perplexity(np.log(7.0)) == pytest.approx(7.0)
    assert scores.perplexity(1e6) == float("inf")
    assert scores.is_better("valid_loss", {"valid_loss": 0.1}, {"valid_loss": 0.2})
    assert scores.is_better("accuracy", {"accuracy": 0.9}, {"accuracy": 0.8})
    assert not scores.is_better("accuracy", {"accuracy": 0.85}, {"accuracy": 0.8}, min_delta=0.1)
    assert not scores.is_better("roc_auc", {}, {"roc_auc": 0.5})
