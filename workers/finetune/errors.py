"""How a failed job's error reads on the job object (the trainer and its fenced child both use it)."""

from __future__ import annotations


def describe_error(exc: BaseException, readable: tuple[type[BaseException], ...]) -> dict[str, str]:
    """A readable error for the job object (no stack trace, no TorchScript source or paths)."""
    import torch

    if isinstance(exc, readable):
        return {"code": type(exc).__name__, "message": str(exc)[:500]}
    if isinstance(exc, torch.OutOfMemoryError):
        return {"code": "out_of_memory", "message": "the device ran out of memory; try a smaller batch_size"}
    text = str(exc)
    if "Traceback of TorchScript" in text:  # keep the model's own error, not its source and paths
        text = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
        return {"code": "model_error", "message": f"the model raised: {text.strip()[:400]}"}
    return {"code": "training_error", "message": f"{type(exc).__name__}: {text[:400]}"}
