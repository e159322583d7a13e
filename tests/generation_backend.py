"""A deterministic GenerationBackend for the generation loop's tests: a thread that "generates"
token `tok{i} ` per step at a set pace for every running request, honours cancel (the sequence is
freed at once), max_tokens and the context length, and reports stats. Prompt tokens are the
prompt's words. `load` is the loop's loader (BackendLoader); KILN_TEST_GEN_STEP_MS sets the pace
in a worker process. And `register_gen_version`: an hf-causal-lm version in the registry without
a real model (the format check is the engine's, not the loop's)."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_store.registry import Registry, ResolvedVersion
from model_store.signature import Signature, TensorSpec, VersionConfig
from workers.contract.generation import GenRequestMsg, GenUsage
from workers.generation.backend import GenEvent, GenInputError, GenStats

DEFAULT_MAX = 16


def token(i: int) -> str:
    return f"tok{i} "


def expected_text(n: int) -> str:
    return "".join(token(i) for i in range(n))


@dataclass
class _Seq:
    prompt_tokens: int
    max_tokens: int
    generated: int = 0


class StepBackend:
    def __init__(self, step_s: float = 0.005, context_length: int = 64) -> None:
        self.step_s = step_s
        self._context = context_length
        self._lock = threading.Lock()
        self._seqs: dict[str, _Seq] = {}
        self._events: queue.Queue[GenEvent] = queue.Queue()
        self._stop = threading.Event()
        self.submitted: list[str] = []
        self._crash = False
        self._thread = threading.Thread(target=self._run, name="step-backend", daemon=True)
        self._thread.start()

    @property
    def context_length(self) -> int:
        return self._context

    def submit(self, req: GenRequestMsg) -> None:
        text = req.prompt if req.mode == "completion" else " ".join(m["content"] for m in req.messages or [])
        prompt_tokens = len((text or "").split())
        if "RAISE" in (text or ""):
            raise RuntimeError("backend bug")
        self._crash = self._crash or "CRASHPOLL" in (text or "")  # the engine dies under it
        if prompt_tokens > self._context:
            raise GenInputError(
                f"the prompt has {prompt_tokens} tokens; this model's context is {self._context}",
                "context_length_exceeded",
            )
        room = self._context - prompt_tokens
        max_tokens = min(req.params.max_tokens or DEFAULT_MAX, room)
        with self._lock:
            self._seqs[req.request_id] = _Seq(prompt_tokens, max_tokens)
            self.submitted.append(req.request_id)

    def cancel(self, request_id: str) -> None:
        with self._lock:
            seq = self._seqs.pop(request_id, None)
        if seq is not None:
            usage = GenUsage(seq.prompt_tokens, seq.generated)
            self._events.put(GenEvent(request_id, finish="cancelled", done=True, usage=usage))

    def poll(self, timeout_s: float) -> list[GenEvent]:
        if self._crash:
            raise BrokenPipeError("engine child died")
        out: list[GenEvent] = []
        try:
            out.append(self._events.get(timeout=timeout_s) if timeout_s > 0 else self._events.get_nowait())
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def stats(self) -> GenStats:
        with self._lock:
            return GenStats(running=len(self._seqs), waiting=0, kv_cache_usage=len(self._seqs) / 100)

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.step_s):
            with self._lock:
                for rid, seq in list(self._seqs.items()):
                    self._events.put(self._step(rid, seq))

    def _step(self, rid: str, seq: _Seq) -> GenEvent:
        ev = GenEvent(rid, text=token(seq.generated), tokens=1, first_token=seq.generated == 0)
        seq.generated += 1
        if seq.generated >= seq.max_tokens:
            del self._seqs[rid]
            ev.finish, ev.done, ev.usage = "length", True, GenUsage(seq.prompt_tokens, seq.generated)
        return ev


def load(version: ResolvedVersion, path: Path) -> StepBackend:
    """The loop's loader in tests: the pace from KILN_TEST_GEN_STEP_MS (default 5 ms), the
    context length from KILN_TEST_GEN_CONTEXT (default 64)."""
    step_s = float(os.environ.get("KILN_TEST_GEN_STEP_MS", "5")) / 1000
    return StepBackend(step_s, int(os.environ.get("KILN_TEST_GEN_CONTEXT", "64")))


def load_failing(version: ResolvedVersion, path: Path) -> StepBackend:
    raise RuntimeError("weights are corrupt at /secret/path/model.safetensors")


def _any_check(fmt: str, upload: Path, signature: Signature | None) -> Signature:
    spec = (TensorSpec(name="text", datatype="BYTES", shape=(-1,)),)
    return Signature(inputs=spec, outputs=spec)


def register_gen_version(registry: Registry, tmp: Path, name: str = "chat", fmt: str = "hf-causal-lm") -> int:
    """Version id of a new `fmt` version (default tenant) with placeholder bytes as artifact."""
    permissive = Registry(registry.sessions, registry.blobs, _any_check)
    tenant = permissive.ensure_tenant("default")
    if not permissive.has_model(tenant, name):
        permissive.create_model(tenant, name)
    data = f"placeholder {name} {fmt}".encode()
    upload = tmp / f"upload-{name}-{fmt}"
    upload.write_bytes(data)
    row: Any = permissive.add_version(
        tenant, name, fmt, upload, hashlib.sha256(data).hexdigest(), len(data), None, VersionConfig()
    )
    return int(row.id)
