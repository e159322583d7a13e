"""Which device model code runs on: the one place that asks torch whether a GPU is present."""

from __future__ import annotations

from typing import Literal

from workers.contract.errors import LoadError

Device = Literal["cpu", "cuda"]


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pick_device(preference: str) -> Device:
    """ "cpu", "cuda" or "auto" (CUDA when a GPU is present); "cuda" without a GPU is a LoadError."""
    if preference == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if preference == "cuda":
        raise LoadError("this version asks for CUDA and no GPU is present")
    return "cpu"
