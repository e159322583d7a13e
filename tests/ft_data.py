"""Tiny fine-tune fixtures built by the tests: an MLP classifier and labelled rows (no downloads)."""

from __future__ import annotations

import json

import numpy as np
import torch

from tests.models import torchscript_bytes

MLP_SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
}


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    return torchscript_bytes(MLP())


def rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes from a fixed rule on 4 features: learnable by the MLP in a few epochs."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int) + (x[:, 2] > 0.6).astype(int)
    return x, y


def jsonl(x: np.ndarray, y: np.ndarray) -> bytes:
    return "".join(
        json.dumps({"input": [round(float(v), 5) for v in xi], "label": int(yi)}) + "\n"
        for xi, yi in zip(x, y, strict=True)
    ).encode()


def csv_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    lines = ["f0,f1,f2,f3,label"] + [
        ",".join(f"{v:.5f}" for v in xi) + f",{float(yi):.6g}" for xi, yi in zip(x, y, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()


_SPORT = (
    ["The striker", "Our goalkeeper", "The home team", "The tennis star", "A young sprinter", "The coach"],
    ["scored a late goal in", "won the final of", "trained hard before", "celebrated victory after"],
    ["the football match", "the league season", "the tournament", "the championship game", "the relay race"],
)
_FOOD = (
    ["The chef", "My grandmother", "The baker", "A home cook", "The pastry student", "Our waiter"],
    ["simmered garlic and tomatoes for", "baked fresh bread for", "seasoned the soup for", "served pasta at"],
    ["the family dinner", "the cooking class", "the restaurant kitchen", "the birthday party", "lunch today"],
)


def topic_texts(n: int, seed: int) -> list[tuple[str, int]]:
    """Short English sentences on two clearly separable topics: sport (label 0) and cooking (1)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 2
        parts = _FOOD if label else _SPORT
        out.append((" ".join(str(rng.choice(p)) for p in parts) + ".", label))
    return out


def text_jsonl(items: list[tuple[str, int]]) -> bytes:
    return "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in items).encode()
