"""Loss and metrics of a causal language model fine-tune (next-token cross entropy on the tokens
that carry a label; -100 elsewhere: prompts, system and user turns, padding).

The module maps [N, 2, L] (ids, mask) to logits [N, L', vocab] (L' <= L: the batch's own width);
labels are [N, L] aligned with the ids, so position t's logits predict label t + 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F

IGNORE = -100
EVAL_ROWS = 8  # rows per evaluation forward: logits are rows x tokens x vocabulary floats


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position losses [N, L'-1] and the mask of positions that count."""
    target = labels[:, 1 : logits.shape[1]]
    flat = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        target.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    )
    return flat.view(target.shape), target != IGNORE


def causal_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    losses, mask = _token_losses(logits, labels)
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def _sums(module: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[int]]:
    """Per row: the summed token loss and the number of tokens that count (eval mode, no grad)."""
    was_training = module.training
    module.eval()
    totals: list[float] = []
    counts: list[int] = []
    with torch.no_grad():
        for i in range(0, len(x), EVAL_ROWS):
            losses, mask = _token_losses(module(x[i : i + EVAL_ROWS]), y[i : i + EVAL_ROWS])
            totals.extend((losses * mask).sum(dim=1).tolist())
            counts.extend(mask.sum(dim=1).tolist())
    module.train(was_training)
    return totals, counts


def causal_evaluate(module: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """valid_loss (mean over the labelled tokens of the validation rows) and perplexity."""
    totals, counts = _sums(module, x, y)
    loss = sum(totals) / max(1, sum(counts))
    return {"valid_loss": float(loss), "perplexity": float(math.exp(min(loss, 700.0)))}


def causal_row_losses(module: Any, x: torch.Tensor, y: torch.Tensor) -> list[Any]:
    """Per validation row, its mean token loss (the results file's `predicted` column)."""
    totals, counts = _sums(module, x, y)
    return [round(t / c, 6) if c else None for t, c in zip(totals, counts, strict=True)]
