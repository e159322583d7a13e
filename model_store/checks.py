"""Upload checks run in a fenced child, never in the caller.

Checking an artifact means parsing it and, for TorchScript, loading and running it once: that is
model code. `FencedCheck` runs `model_store.formats.validate` in a child (model_store.fence) that
can read the uploaded file and nothing else, under a wall-clock limit, a memory limit and a CPU
limit. The caller (the gateway, the trainer registering a result) only waits for the verdict: a
signature, or `InvalidArtifact` with the reason. A check that does not finish in time is refused
as such ("did not finish within N s"), as is one that runs out of memory.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from model_store.channel import Channel
from model_store.errors import InvalidArtifact
from model_store.fence import FencedChild, FenceDied, FenceSpec, FenceTimeout, FenceUnavailable
from model_store.limits import ArtifactLimits
from model_store.signature import Signature

_TARGET = "model_store.checks:check_in_child"
FenceMode = Literal["required", "auto", "off"]
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\"'\\/:<>]+){2,}")  # no host path in an error body


@dataclass(frozen=True)
class FencedCheck:
    """`validate(fmt, path, signature)` in a fenced child. `mode`: `required` refuses to check
    without Landlock, `auto` checks in a limited child without it (a warning is logged), `off`
    checks in this process (debugging only)."""

    timeout_s: float = 60.0
    memory_bytes: int = 4 << 30
    mode: FenceMode = "required"
    limits: ArtifactLimits = field(default_factory=ArtifactLimits)  # bundles are read under these

    def __call__(self, fmt: str, path: Path, signature: Signature | None) -> Signature:
        if self.mode == "off":
            from model_store.formats import validate

            return validate(fmt, path, signature, self.limits)
        spec = FenceSpec(
            read=(str(path),),
            memory_bytes=self.memory_bytes,
            cpu_s=int(self.timeout_s) + 5,
            require=self.mode == "required",
        )
        args = {
            "format": fmt,
            "path": str(path),
            "signature": signature.model_dump(mode="json") if signature is not None else None,
            "limits": asdict(self.limits),
        }
        deadline = time.monotonic() + self.timeout_s
        try:
            child = FencedChild(
                "model_store.checks:check_in_child", args, spec, start_timeout_s=self.timeout_s
            )
        except FenceTimeout as exc:
            raise InvalidArtifact(f"the model check did not finish within {self.timeout_s:g} s") from exc
        except (FenceUnavailable, FenceDied) as exc:
            raise InvalidArtifact(f"the model check could not run: {exc}") from exc
        try:
            reply, _ = child.call({"op": "check"}, timeout_s=max(deadline - time.monotonic(), 0.01))
        except FenceTimeout as exc:
            raise InvalidArtifact(f"the model check did not finish within {self.timeout_s:g} s") from exc
        except FenceDied as exc:
            reason = "over its memory limit" if "MemoryError" in str(exc) else str(exc)
            raise InvalidArtifact(f"the model check failed: {reason}") from exc
        finally:
            child.close()
        if not reply.get("ok"):
            raise InvalidArtifact(
                _PATH.sub("<path>", str(reply.get("error", "the artifact was refused")))[:500]
            )
        return Signature.model_validate(reply["signature"])


def check_in_child(channel: Channel, args: dict[str, Any]) -> None:
    """The child's side: wait for the request, validate, answer once."""
    from model_store.formats import validate

    channel.recv()
    given = Signature.model_validate(args["signature"]) if args["signature"] is not None else None
    try:
        sig = validate(str(args["format"]), Path(args["path"]), given, ArtifactLimits(**args["limits"]))
    except InvalidArtifact as exc:
        channel.send({"ok": False, "error": str(exc)})
        return
    channel.send({"ok": True, "signature": sig.model_dump(mode="json")})
