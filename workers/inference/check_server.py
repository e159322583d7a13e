"""Model checks a worker runs for gateways that cannot (KILN_CHECKS, service/checks.py).

A thread of the worker reads `RedisKeys.checks` in the consumer group `checkers` (one check at a time
per worker; several workers share the stream), runs the check in a fenced child exactly as a
gateway would (model_store.checks.FencedCheck for an upload, workers/finetune/fence.py check_model
for a fine-tune job) and writes the verdict to the check's reply stream.

Nothing in a message is a path: an upload is named by its file name in the blob store's pending
area (tmp/upload-*), a job's blobs by their sha256; this worker resolves both under its own blob
store. The fence mode is this worker's own (KILN_FENCE), never the gateway's. A check whose
gateway has already given up (its deadline passed) is dropped unrun.
"""

from __future__ import annotations

import logging
import re
import stat
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from model_store.blobs import BlobStore
from model_store.checks import FencedCheck, FenceMode
from model_store.errors import InvalidArtifact, NotFound
from model_store.limits import ArtifactLimits
from model_store.signature import Signature
from workers.common.retry import run_until_stopped
from workers.contract.finetune_check import CheckFailed, FenceLimits, check_model, readable_paths
from workers.contract.groups import ensure_group
from workers.contract.messages import CheckReplyMsg, CheckRequestMsg, ContractError
from workers.contract.redis_keys import CHECK_GROUP, RedisKeys

log = logging.getLogger("kiln.worker.checks")
_UPLOAD = re.compile(r"upload-[A-Za-z0-9_]{1,64}")
_REFS = ("base", "train", "valid", "checkpoint")
_REPLY_TTL_S = 60

_BACKOFF = ExponentialBackoff(cap=2.0, base=0.05)  # 0.1 s after a first failure, doubling to 2 s


class CheckServer:
    def __init__(
        self, client: redis.Redis, keys: RedisKeys, blobs: BlobStore, fence: FenceMode, consumer: str
    ) -> None:
        self.r = client
        self.keys = keys
        self.blobs = blobs
        self.fence = fence
        self.consumer = consumer
        self._grouped = False

    def _ensure_group(self) -> None:
        ensure_group(self.r, self.keys.checks, CHECK_GROUP)
        self._grouped = True

    def _lost(self, exc: Exception) -> None:
        log.warning("check stream unavailable (%s); retrying", type(exc).__name__)
        self._grouped = False

    def _turn(self) -> None:
        self.once(block_ms=1000)

    def serve(self, stop: threading.Event) -> None:
        run_until_stopped(self._turn, stop, (RedisError, OSError), self._lost, _BACKOFF)

    def once(self, block_ms: int) -> int:
        """Read and answer at most one check; how many were read."""
        if not self._grouped:
            self._ensure_group()
        resp: Any = self.r.xreadgroup(
            CHECK_GROUP, self.consumer, {self.keys.checks: ">"}, count=1, block=block_ms
        )
        n = 0
        for _stream, entries in resp or ():
            for eid, fields in entries:
                n += 1
                self._handle(fields)
                pipe = self.r.pipeline(transaction=False)
                pipe.xack(self.keys.checks, CHECK_GROUP, eid)
                pipe.xdel(self.keys.checks, eid)
                pipe.execute()
        return n

    def _handle(self, fields: dict[bytes, bytes]) -> None:
        try:
            msg = CheckRequestMsg.from_fields(fields)
        except ContractError as exc:
            log.warning("dropped a check message: %s", exc)
            return
        left_s = msg.deadline_ms / 1000 - time.time()
        if left_s <= 0.05:
            log.info("check %s dropped: its gateway stopped waiting", msg.check_id)
            return
        started = time.monotonic()
        try:
            result = self.run(msg.kind, msg.args, left_s)
            reply = CheckReplyMsg(msg.check_id, True, result, worker=self.consumer)
        except (InvalidArtifact, CheckFailed, NotFound) as exc:
            reply = CheckReplyMsg(msg.check_id, False, error=str(exc)[:500], worker=self.consumer)
        except (KeyError, TypeError, ValueError) as exc:
            reply = CheckReplyMsg(msg.check_id, False, error=f"malformed check request: {type(exc).__name__}")
        log.info(
            "check %s (%s): %s in %.2f s",
            msg.check_id,
            msg.kind,
            "passed" if reply.ok else "refused",
            time.monotonic() - started,
        )
        pipe = self.r.pipeline(transaction=False)
        pipe.xadd(msg.reply_to, reply.to_fields(), maxlen=10)  # type: ignore[arg-type]
        pipe.expire(msg.reply_to, _REPLY_TTL_S)
        pipe.execute()

    def run(self, kind: str, args: dict[str, Any], left_s: float) -> dict[str, Any]:
        if kind == "upload":
            return self._upload(args, left_s)
        return self._finetune(args, left_s)

    def _upload(self, args: dict[str, Any], left_s: float) -> dict[str, Any]:
        path = self._pending(str(args["upload"]))
        check = FencedCheck(
            timeout_s=min(float(args["timeout_s"]), left_s),
            memory_bytes=int(args["memory_bytes"]),
            mode=self.fence,
            limits=ArtifactLimits(**args["limits"]),
        )
        given = Signature.model_validate(args["signature"]) if args["signature"] is not None else None
        sig = check(str(args["format"]), path, given)
        return {"signature": sig.model_dump(mode="json")}

    def _pending(self, name: str) -> Path:
        """The spooled upload, only by its name in the pending area, only a regular file."""
        if not _UPLOAD.fullmatch(name):
            raise InvalidArtifact("the upload is not in the blob store's pending area")
        path = self.blobs.root / "tmp" / name
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError as exc:
            raise InvalidArtifact("the upload is no longer in the blob store's pending area") from exc
        if not stat.S_ISREG(mode):
            raise InvalidArtifact("the upload is not a regular file")
        return path

    def _finetune(self, args: dict[str, Any], left_s: float) -> dict[str, Any]:
        job = dict(args["job"])
        for name in _REFS:
            ref = job.get(name)
            if ref:
                job[name] = {**ref, "path": str(self.blobs.path_for(str(ref["sha256"])).resolve())}
        given = dict(args["limits"])
        limits = FenceLimits(
            **{
                **given,
                "check_timeout_s": min(float(given["check_timeout_s"]), left_s),
                "require": self.fence == "required",
            }
        )
        return {"counts": check_model(job, readable_paths(job), limits)}


def start_check_server(
    client: redis.Redis,
    keys: RedisKeys,
    blobs: BlobStore,
    fence: FenceMode,
    consumer: str,
    stop: threading.Event,
) -> threading.Thread:
    server = CheckServer(client, keys, blobs, fence, consumer)
    thread = threading.Thread(target=server.serve, args=(stop,), name="kiln-check-server", daemon=True)
    thread.start()
    return thread
