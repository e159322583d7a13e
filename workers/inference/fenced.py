"""Model instances in fenced child processes, as the worker sees them.

`FencedRunner` has the `Runner` protocol (`device`, `run(inputs) -> outputs`); the model itself
runs in a `model_store.fence.FencedChild` (workers/inference/model_host.py): Landlock lets it read the
Python installation and its own artifact only, write only its temporary directory, reach no
TCP port; an address-space limit bounds its memory on CPU. A call that does not answer by the
batch's deadline (`deadline_scope`) kills the child: `FenceTimeout`, and the worker unloads the
version. Model failures come back as a header (a public message and a kind), raised here as the
exceptions the worker's split/retry logic already knows.

`KILN_FENCE`: required (refuse to load without Landlock), auto (warn, run unfenced if the
kernel has no Landlock), off (in-process runners, for debugging).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from model_store.channel import FenceError
from model_store.fence import FencedChild, FenceSpec, FenceTimeout
from model_store.limits import ArtifactLimits
from model_store.registry import ResolvedVersion
from workers.common.device import pick_device
from workers.contract.errors import LoadError
from workers.contract.tensors import TensorDecodeError
from workers.inference import model_host
from workers.inference.runners import load_local_runner
from workers.inference.runtime import AdapterMissing, InputRejected, Runner

FenceMode = Literal["required", "auto", "off"]
MARGIN_S = 0.25  # past the batch's latest deadline before the child is killed
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("kiln_run_deadline", default=None)


class ModelOutOfMemory(RuntimeError):
    """The model ran out of memory in its process (the worker halves the batch)."""


class ModelFailed(RuntimeError):
    """The model raised; the message is already fit for a client."""


@contextlib.contextmanager
def deadline_scope(deadline: float) -> Iterator[None]:
    """Runs inside this block answer by `deadline` (monotonic seconds) plus MARGIN_S, or die."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


class FencedRunner:
    TARGET = "workers.inference.model_host:serve"  # what the child runs

    def __init__(
        self,
        version: ResolvedVersion,
        path: Path,
        *,
        threads: int = 0,
        mode: FenceMode = "required",
        memory_bytes: int = 8 << 30,
        load_timeout_s: float = 300.0,
        limits: ArtifactLimits | None = None,
    ) -> None:
        gpu = pick_device(version.config.device) == "cuda"
        spec = FenceSpec(
            read=(str(path),), memory_bytes=0 if gpu else memory_bytes, gpu=gpu, require=mode == "required"
        )
        self.load_timeout_s = load_timeout_s
        args = {
            "version": version,
            "path": str(path),
            "sha256": version.sha256,
            "threads": threads,
            "limits": limits or ArtifactLimits(),
        }
        try:
            self._child = FencedChild(self.TARGET, args, spec, start_timeout_s=load_timeout_s)
        except FenceError as exc:
            raise LoadError(f"model process could not start: {exc}") from exc
        header = self._first()
        self.device = str(header.get("device", "cpu"))
        reported = header.get("bytes")
        self.memory_bytes = reported if type(reported) is int and reported >= 0 else 0

    def _first(self) -> dict[str, object]:
        try:
            if not self._child.channel.poll(self.load_timeout_s):
                raise FenceTimeout(f"model did not load within {self.load_timeout_s:.0f} s")
            header, _ = self._child.channel.recv()
        except (FenceError, EOFError, OSError, ValueError) as exc:
            self._child.kill()
            raise LoadError(f"model process failed while loading: {exc}") from exc
        if not header.get("loaded"):
            self._child.close()
            raise LoadError(str(header.get("error", "model process failed while loading"))[:300])
        return header

    @property
    def pid(self) -> int | None:
        return self._child.pid

    def _timeout(self) -> float:
        deadline = _deadline.get()
        return self.load_timeout_s if deadline is None else max(deadline - time.monotonic(), 0) + MARGIN_S

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run({"op": "run"}, inputs)

    def run_adapter(self, inputs: dict[str, np.ndarray], key: int) -> dict[str, np.ndarray]:
        """A batch of LoRA adapter version `key` on this child's base (AdapterMissing when the
        child does not hold it: the caller sends it with add_adapter)."""
        return self._run({"op": "run", "adapter": int(key)}, inputs)

    def add_adapter(self, key: int, data: bytes, capacity: int) -> None:
        """Send an adapter's bundle (the worker checked its sha256; the child cannot read the
        blob store) to be loaded beside the base; LoadError if the child refuses it."""
        header = {"op": "adapter", "adapter": int(key), "capacity": int(capacity)}
        reply, _ = self._child.call(header, [data], timeout_s=self._timeout())
        if not reply.get("added"):
            raise LoadError(str(reply.get("error", "the adapter could not be loaded"))[:300])

    def _run(self, header: dict[str, object], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        metas, bufs = model_host.encode(inputs)
        reply, out = self._child.call({**header, "inputs": metas}, bufs, timeout_s=self._timeout())
        if "outputs" in reply:
            try:
                return model_host.decode(reply["outputs"], out)
            except TensorDecodeError as exc:
                raise ModelFailed(f"model returned malformed outputs: {exc}") from exc
        message = str(reply.get("error", "model failed"))[:300]
        kind = reply.get("kind")
        if kind == model_host.OOM:
            raise ModelOutOfMemory(message)
        if kind == model_host.REJECTED:
            raise InputRejected(message)
        if kind == model_host.MISSING:
            raise AdapterMissing(message)
        raise ModelFailed(message)

    def terminate(self) -> None:
        """Kill the child now, from any thread (a call waiting on it fails with FenceDied)."""
        pid = self._child.pid
        if pid is not None and self._child.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        self._child.close()


def fenced_of(runner: object) -> FencedRunner | None:
    """The fenced runner inside a runner (tests wrap runners; wrappers keep theirs in `inner`)."""
    for _ in range(8):
        if isinstance(runner, FencedRunner):
            return runner
        runner = getattr(runner, "inner", None)
    return None


def close_runners(runners: list[Runner], *, kill: bool = False) -> None:
    for r in runners:
        fenced = fenced_of(r)
        if fenced is not None:
            fenced.terminate() if kill else fenced.close()


def start_fork_server() -> None:
    """Start the fence's fork server (it imports the runtimes, seconds) before the first load."""
    from model_store import fence

    # the fork server and its children ignore SIGTERM/SIGINT sent to the worker's process group
    fence.preload(
        "workers.common.fork_server_init", "workers.inference.model_host", "workers.inference.runners"
    )
    fence.prestart()


def load_runner(
    version: ResolvedVersion,
    path: Path,
    threads: int = 0,
    mode: FenceMode = "required",
    memory_bytes: int = 8 << 30,
    limits: ArtifactLimits | None = None,
) -> Runner:
    """One model instance: in a fenced child unless the mode is off."""
    if mode == "off":
        return load_local_runner(version, model_host.read_verified(path, version.sha256), threads, limits)
    return FencedRunner(version, path, threads=threads, mode=mode, memory_bytes=memory_bytes, limits=limits)
