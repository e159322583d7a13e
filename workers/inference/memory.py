"""How much memory loading a model version took: on CUDA, this process's device memory as NVML
reports it (covers onnxruntime and torch alike), else what torch's allocator holds; on CPU, the
resident set size. Approximate by nature: other allocations may interleave, and the first load
on a GPU includes the CUDA context."""

from __future__ import annotations

import os
import sys
from functools import cache
from types import ModuleType

import psutil


@cache
def _nvml() -> ModuleType | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # not installed, no driver, no GPU
        return None
    return pynvml


def _nvml_process_bytes() -> int:
    nvml = _nvml()
    if nvml is None:
        return 0
    pid, total = os.getpid(), 0
    try:
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    total += int(proc.usedGpuMemory)
    except Exception:
        return 0
    return total


def _torch_allocated() -> int:
    torch = sys.modules.get("torch")  # never import torch just to ask
    try:
        if torch is not None and torch.cuda.is_initialized():
            return int(torch.cuda.memory_allocated())
    except Exception:
        return 0
    return 0


def snapshot() -> tuple[int, int]:
    """(resident bytes, CUDA bytes of this process; 0 without a GPU)."""
    return psutil.Process().memory_info().rss, _nvml_process_bytes() or _torch_allocated()


def used_since(before: tuple[int, int], device: str) -> int | None:
    try:
        after = snapshot()
    except Exception:
        return None
    index = 1 if device.startswith("cuda") else 0
    return max(after[index] - before[index], 0)
