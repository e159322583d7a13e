"""A generation model in a fenced child process, as the worker's loop sees it.

`FencedGenerationBackend` implements `GenerationBackend`; the model runs in a
`model_store.fence.FencedChild` (host.py) that reads the version's blob and nothing else. The
child sends events unasked; `poll` reads what has come and `submit` waits for its own answer,
keeping the events that arrive before it for the next `poll`. The loop's one thread makes every
call, so no reader thread is needed.

A child that dies, hangs past SUBMIT_TIMEOUT_S or sends a malformed frame is killed, and every
request still running gets an error event (code `model_error`, its last); later submissions get
one too, at once, and `alive` turns false so the loop can unload the version.

`load_backend` is the factory: fenced, or in this process with KILN_FENCE=off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model_store import conversions
from model_store.channel import FenceError
from model_store.fence import FencedChild, FenceSpec, FenceTimeout
from model_store.gguf_check import is_gguf
from model_store.limits import ArtifactLimits
from model_store.registry import ResolvedVersion
from workers.common.device import pick_device
from workers.contract.errors import LoadError
from workers.contract.generation import GenErrorCode, GenRequestMsg
from workers.generation.backend import AdapterBytes, GenerationBackend, GenEvent, GenInputError, GenStats
from workers.generation.engine import EngineOptions
from workers.generation.host import CONVERTED
from workers.generation.wire import WireError, events_from_json, stats_from_json

log = logging.getLogger("kiln.generation")
FenceMode = Literal["required", "auto", "off"]
SUBMIT_TIMEOUT_S = 30.0  # tokenising and templating one request
TARGET = "workers.generation.host:serve"
# transformers' continuous batching sizes its CPU swap pool from psutil.virtual_memory() whether
# or not it swaps, and its CPU cache from psutil.Process().memory_info()
_CHILD_READ = ("/proc/meminfo", "/proc/self/statm")  # opened in the child: its own
_CHILD_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


@dataclass(frozen=True, slots=True)
class GenLoadSettings:
    mode: FenceMode = "required"
    threads: int = 0
    memory_bytes: int = 8 << 30
    load_timeout_s: float = 300.0
    limits: ArtifactLimits = field(default_factory=ArtifactLimits)
    options: EngineOptions = field(default_factory=EngineOptions)
    cache_dir: Path | None = (
        None  # GGUF conversions; None: next to the blob store (model_store/conversions.py)
    )


class FencedGenerationBackend:
    def __init__(
        self, path: Path, sha256: str, device: str, settings: GenLoadSettings, convert: bool = False
    ) -> None:
        gpu = device == "cuda"
        self._file_bytes = 16 * path.stat().st_size + (64 << 20) if convert else 256 << 20
        spec = FenceSpec(
            read=(str(path), *_CHILD_READ),
            memory_bytes=0 if gpu else settings.memory_bytes,
            file_bytes=self._file_bytes,
            gpu=gpu,
            require=settings.mode == "required",
            env=_CHILD_ENV,
        )
        args = {
            "path": str(path),
            "sha256": sha256,
            "device": device,
            "threads": settings.threads,
            "limits": settings.limits,
            "options": settings.options,
            "convert": convert,
        }
        try:
            self._child = FencedChild(TARGET, args, spec, start_timeout_s=settings.load_timeout_s)
        except FenceError as exc:
            raise LoadError(f"model process could not start: {exc}") from exc
        header = self._first(settings.load_timeout_s)
        self._context = int(header["context_length"])
        self.device = str(header.get("device", "cpu"))
        self._converted = header.get("converted") == CONVERTED
        self._events: list[GenEvent] = []
        self._open: set[str] = set()
        self._sent: set[int] = set()  # adapters whose bytes the child has been sent
        self._stats = GenStats()
        self._dead = ""

    def keep_conversion(self, cache: Path, sha256: str) -> None:
        """Copy the bundle the child converted the GGUF file into to the cache (best effort)."""
        if not self._converted:
            return
        try:
            conversions.keep(cache, sha256, Path(self._child.tmp_dir) / CONVERTED, self._file_bytes)
        except (OSError, ValueError) as exc:
            log.warning("could not keep the converted model: %s", exc)

    def _first(self, timeout_s: float) -> dict[str, Any]:
        try:
            if not self._child.channel.poll(timeout_s):
                raise FenceTimeout(f"model did not load within {timeout_s:.0f} s")
            header, _ = self._child.channel.recv()
        except (FenceError, EOFError, OSError, ValueError) as exc:
            self._child.kill()
            raise LoadError(f"model process failed while loading: {exc}") from exc
        if not header.get("loaded") or type(header.get("context_length")) is not int:
            self._child.close()
            raise LoadError(
                str(header.get("error", header.get("died", "model process failed while loading")))[:300]
            )
        return header

    @property
    def context_length(self) -> int:
        return self._context

    @property
    def alive(self) -> bool:
        return not self._dead

    @property
    def pid(self) -> int | None:
        return self._child.pid

    def submit(self, req: GenRequestMsg, adapters: AdapterBytes | None = None) -> None:
        """`adapters` reads the bytes of the request's LoRA adapter; they are sent to the child
        with the request the first time (or again if the child has evicted it since)."""
        if self._dead:
            self._events.append(_error(req.request_id, self._dead))
            return
        ref, bufs = req.adapter, [req.to_fields()[b"h"]]
        if ref is not None and adapters is not None and ref.version_id not in self._sent:
            bufs.append(adapters(ref))  # GenInputError: this request fails alone
        reply = self._ask(req.request_id, bufs)
        if reply is not None and reply.get("need_adapter"):
            if ref is None or adapters is None or len(bufs) > 1:
                raise GenInputError("the model process refused the adapter", GenErrorCode.UNAVAILABLE)
            self._sent.discard(ref.version_id)
            reply = self._ask(req.request_id, [*bufs, adapters(ref)])
        if reply is None:
            return
        if "error" in reply:
            raise GenInputError(
                str(reply["error"])[:1000], str(reply.get("code", GenErrorCode.INVALID_INPUT))[:64]
            )
        self._open.add(req.request_id)
        if ref is not None:
            self._sent.add(ref.version_id)

    def _ask(self, request_id: str, bufs: list[bytes]) -> dict[str, Any] | None:
        """Send a submit, return the child's answer (None: the child is lost; the request has
        its error event)."""
        try:
            self._child.channel.send({"op": "submit", "id": request_id}, bufs)
            return self._read_until(request_id, time.monotonic() + SUBMIT_TIMEOUT_S)
        except _Lost as exc:
            self._die(str(exc))
            self._events.append(_error(request_id, self._dead))
            return None

    def cancel(self, request_id: str) -> None:
        if self._dead or request_id not in self._open:
            return
        try:
            self._child.channel.send({"op": "cancel", "id": request_id})
        except OSError as exc:
            self._die(f"the model process is gone: {exc}")

    def poll(self, timeout_s: float) -> list[GenEvent]:
        if not self._dead and not self._events:
            with contextlib.suppress(_Lost):
                self._read(timeout_s)
        try:
            while not self._dead and self._child.channel.poll(0):
                self._read(0)
        except _Lost as exc:
            self._die(str(exc))
        events, self._events = self._events, []
        return events

    def _read_until(self, request_id: str, deadline: float) -> dict[str, Any]:
        while True:
            reply = self._read(max(deadline - time.monotonic(), 0.0), waiting=True)
            if reply is None:
                raise _Lost("the model process did not answer in time")
            if reply.get("submitted") == request_id:
                return reply

    def _read(self, timeout_s: float, waiting: bool = False) -> dict[str, Any] | None:
        """One frame: events are kept for poll, a reply is returned. None when nothing came."""
        ch = self._child.channel
        try:
            if not ch.poll(timeout_s):
                return None
            header, _ = ch.recv()
            if "died" in header:
                raise _Lost(f"the model process failed: {str(header['died'])[:200]}")
            if "events" in header:
                self._take(events_from_json(header["events"]))
                self._stats = stats_from_json(header.get("stats"))
                return {} if waiting else None
            return header
        except (EOFError, OSError, FenceError, ValueError) as exc:  # WireError is a ValueError
            self._die(
                f"the model process is gone: {type(exc).__name__}"
                if not isinstance(exc, WireError)
                else str(exc)
            )
            raise _Lost(self._dead) from exc
        except _Lost as exc:
            self._die(str(exc))
            raise

    def _take(self, events: list[GenEvent]) -> None:
        for e in events:
            if e.request_id in self._open:
                self._events.append(e)
                if e.done:
                    self._open.discard(e.request_id)

    def _die(self, reason: str, kill: bool = True) -> None:
        """From now on every request gets an error event; the running ones get theirs now."""
        if self._dead:
            return
        self._dead = reason or "the model process died"
        self._events.extend(_error(rid, self._dead) for rid in sorted(self._open))
        self._open.clear()
        self._stats = GenStats()
        if kill:
            self.terminate()

    def stats(self) -> GenStats:
        """The child's latest stats: frames already waiting are read first (their events kept
        for poll), so an idle backend's gauges do not stay at what its last request left."""
        try:
            while not self._dead and self._child.channel.poll(0):
                self._read(0)
        except (_Lost, OSError, EOFError) as exc:
            self._die(str(exc))
        return self._stats

    def terminate(self) -> None:
        """Kill the child now (it answers no more)."""
        pid = self._child.pid
        if pid is not None and self._child.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        if not self._dead:
            with contextlib.suppress(OSError):
                self._child.channel.send({"op": "close"})
        self._die("the model was unloaded", kill=False)
        self._child.close()  # EOF, a moment to stop, then SIGKILL


class _Lost(Exception):
    """The child is gone or broke the protocol."""


def _error(request_id: str, message: str) -> GenEvent:
    return GenEvent(request_id, finish="error", done=True, code=GenErrorCode.MODEL_ERROR, error=message[:300])


def start_fork_server() -> None:
    """Start the fence's fork server with the generation host preloaded (before the first load;
    the fork server ignores SIGTERM/SIGINT sent to the worker's process group)."""
    from model_store import fence

    fence.preload("workers.common.fork_server_init", "workers.generation.host", "workers.common.causal_model")
    fence.prestart()


def load_backend(
    version: ResolvedVersion, path: Path, settings: GenLoadSettings | None = None
) -> GenerationBackend:
    """One generation model: in a fenced child unless the mode is off. A GGUF version loads from
    its converted bundle where one is cached (model_store/conversions.py), and is converted on first load."""
    settings = settings or GenLoadSettings()
    device = pick_device(version.config.device)
    if settings.mode == "off":
        from workers.common.causal_model import load_model
        from workers.generation.engine import Engine

        loaded = load_model(path, version.sha256, device, settings.limits)
        return Engine(loaded, settings.options, settings.limits)
    cache = settings.cache_dir or conversions.cache_dir_for(path, version.sha256)
    if cache is None or not is_gguf(path):
        return FencedGenerationBackend(path, version.sha256, device, settings)
    hit = conversions.cached(cache, version.sha256)
    if hit is not None:
        try:
            return FencedGenerationBackend(hit[0], hit[1], device, settings)
        except LoadError as exc:
            log.warning(
                "the converted model of %s failed to load (%s); converting again", version.sha256, exc
            )
            conversions.forget(cache, version.sha256)
    backend = FencedGenerationBackend(path, version.sha256, device, settings, convert=True)
    backend.keep_conversion(cache, version.sha256)
    return backend
