"""Which device model code runs on: the one place that asks torch whether a GPU is present."""

from __future__ import annotations

from typing import Literal

from model_store.fence import cuda_available
from workers.contract.errors import LoadError

__all__ = ["Device", "cuda_available", "pick_device"]

Device = Literal["cpu", "cuda"]


def pick_device(preference: str) -> Device:
    """ "cpu", "cuda" or "auto" (CUDA when a GPU is present); "cuda" without a GPU is a LoadError."""
    if preference == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if preference == "cuda":
        raise LoadError("this version asks for CUDA and no GPU is present")
    return "cpu"
