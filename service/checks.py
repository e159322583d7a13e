"""Where the gateway's model checks run (KILN_CHECKS), so that a gateway never needs the runtimes.

A check loads model code (model_store.checks, workers/finetune/fence.py), always in a fenced child
process. `local`: the gateway's own fenced children, which import torch, onnx or tokenizers from
the gateway's environment. `worker`: the gateway asks an inference worker over Redis Streams
(workers/contract: RedisKeys.checks, CheckRequestMsg) to run the same check and waits for the verdict
(workers/inference/check_server.py); an upload travels as its spooled file in the blob store's
pending area (tmp/, never servable), which the gateway deletes whatever the verdict. `auto`: local
where the gateway's environment has what the check needs, else a worker.

The waits block the calling thread (the registry and job creation run in the thread pool), never
the event loop. No verdict in time: CheckUnavailable (503), nothing registered.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import RedisError

from model_store.blobs import BlobStore
from model_store.checks import FencedCheck
from model_store.errors import CheckUnavailable, InvalidArtifact
from model_store.signature import Signature
from workers.contract.finetune_check import CheckFailed, FenceLimits, check_model, readable_paths
from workers.contract.messages import CheckReplyMsg, CheckRequestMsg, ContractError
from workers.contract.redis_keys import RedisKeys

log = logging.getLogger("kiln.checks")

# what each check imports in its fenced child
NEEDS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx",),
    "torchscript": ("torch",),
    "hf-encoder": ("tokenizers",),
    "hf-causal-lm": ("tokenizers",),
    "finetune": ("torch", "transformers", "tokenizers", "safetensors"),
}
_GRACE_S = 2.0  # the reply's way back, on top of the check's own limit
_REPLY_TTL_S = 60


def importable(modules: tuple[str, ...]) -> bool:
    """Whether this environment has these packages (found, not imported)."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):
        return False


def runs_locally(mode: str, what: str) -> bool:
    """Whether check `what` (a format, or "finetune") runs in this gateway's fenced children."""
    if mode == "local":
        return True
    if mode == "worker":
        return False
    return importable(NEEDS.get(what, ("torch",)))


def any_local(mode: str) -> bool:
    return any(runs_locally(mode, what) for what in NEEDS)


class WorkerChecks:
    """Asks a worker to run a check and waits for its verdict (a sync Redis client: callers run
    in the thread pool)."""

    def __init__(self, redis_url: str, keys: RedisKeys) -> None:
        self.redis_url = redis_url
        self.keys = keys
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    def _redis(self) -> redis.Redis:
        with self._lock:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.redis_url, socket_timeout=10, socket_connect_timeout=5
                )
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def ask(self, kind: str, args: dict[str, Any], timeout_s: float) -> CheckReplyMsg:
        """Queue the check and wait up to `timeout_s` (+ the reply's way back) for a verdict."""
        check_id = uuid.uuid4().hex
        reply_to = self.keys.check_reply(check_id)
        deadline = time.time() + timeout_s + _GRACE_S
        msg = CheckRequestMsg(check_id, kind, reply_to, int((time.time() + timeout_s) * 1000), args)
        r = self._redis()
        try:
            entry = r.xadd(self.keys.checks, msg.to_fields(), maxlen=10_000, approximate=True)  # type: ignore[arg-type]
            try:
                return self._wait(r, reply_to, deadline, timeout_s)
            finally:
                pipe = r.pipeline(transaction=False)
                pipe.xdel(self.keys.checks, entry)  # not yet read: no worker runs it after we left
                pipe.delete(reply_to)
                pipe.execute()
        except RedisError as exc:
            raise CheckUnavailable(
                f"the model check needs a worker and Redis is unavailable ({type(exc).__name__}); "
                "nothing was registered"
            ) from exc

    def _wait(self, r: redis.Redis, reply_to: str, deadline: float, timeout_s: float) -> CheckReplyMsg:
        while (left := deadline - time.time()) > 0:
            resp: Any = r.xread({reply_to: "0"}, count=1, block=max(1, int(min(left, 5.0) * 1000)))
            for _stream, entries in resp or ():
                for _eid, fields in entries:
                    try:
                        return CheckReplyMsg.from_fields(fields)
                    except ContractError as exc:
                        raise CheckUnavailable(f"a worker answered the model check wrongly: {exc}") from exc
        raise CheckUnavailable(
            f"no worker answered the model check within {timeout_s:g} s (this gateway runs checks "
            "on workers: KILN_CHECKS); nothing was registered, retry when a worker is up"
        )


class GatewayCheck:
    """The registry's upload check on a gateway: local (FencedCheck) or on a worker, per format."""

    def __init__(self, local: FencedCheck, mode: str, blobs: BlobStore, worker: WorkerChecks) -> None:
        self.local = local
        self.mode = mode
        self.blobs = blobs
        self.worker = worker

    def __call__(self, fmt: str, path: Path, signature: Signature | None) -> Signature:
        if runs_locally(self.mode, fmt):
            return self.local(fmt, path, signature)
        pending = (self.blobs.root / "tmp").resolve()
        if path.resolve().parent != pending:  # only spooled uploads are in the workers' reach
            raise InvalidArtifact("the upload is not in the blob store's pending area")
        args = {
            "upload": path.name,
            "format": fmt,
            "signature": signature.model_dump(mode="json") if signature is not None else None,
            "timeout_s": self.local.timeout_s,
            "memory_bytes": self.local.memory_bytes,
            "limits": asdict(self.local.limits),
        }
        reply = self.worker.ask("upload", args, self.local.timeout_s)
        if not reply.ok:
            raise InvalidArtifact(reply.error or "the artifact was refused")
        try:
            return Signature.model_validate(reply.result["signature"])
        except (KeyError, ValueError) as exc:
            raise CheckUnavailable("a worker answered the model check without a signature") from exc


def finetune_check(
    mode: str, worker: WorkerChecks | None, args: dict[str, Any], limits: FenceLimits
) -> dict[str, int]:
    """A fine-tune job's model check (workers/finetune/fence.py: check_model), here or on a worker.
    CheckFailed when the model is refused; CheckUnavailable when no worker answered."""
    if worker is None or runs_locally(mode, "finetune"):
        return check_model(args, readable_paths(args), limits)
    reply = worker.ask("finetune", {"job": args, "limits": asdict(limits)}, limits.check_timeout_s)
    if not reply.ok:
        raise CheckFailed(reply.error or "the model was refused")
    counts = reply.result.get("counts")
    if not isinstance(counts, dict):
        raise CheckUnavailable("a worker answered the model check without parameter counts")
    return {str(k): int(v) for k, v in counts.items()}
