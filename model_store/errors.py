"""Errors raised by the model store (the gateway maps them to HTTP in one place), and what a
client may see of an exception raised by model code."""

from __future__ import annotations

import re

_FRAME_STARTS = ("File ", "Traceback", "^", "~")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\"'\\/:<>]+){2,}")  # a host path: never in an error body


def public_message(exc: BaseException, limit: int = 300) -> str:
    """What a client may see of a model failure: the last line of the message that is not a
    traceback frame, host paths replaced by `<path>` (TorchScript puts its interpreter
    traceback, with file names, in the message). The one traceback scrubber."""
    lines = [line.strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not line.startswith(_FRAME_STARTS)]
    text = lines[-1] if lines else type(exc).__name__
    return _PATH.sub("<path>", text)[:limit]


class StoreError(Exception):
    """Base class for model-store errors."""


class NotFound(StoreError):
    """The named model, version or alias does not exist (for this tenant)."""


class Conflict(StoreError):
    """The object already exists."""


class InvalidName(StoreError):
    """A name, alias or version reference breaks the naming rule."""


class InvalidArtifact(StoreError):
    """An uploaded artifact is refused: wrong format, unsafe, or inconsistent."""


class ArtifactTooLarge(StoreError):
    """An uploaded artifact is over the size limit."""


class IntegrityFailure(StoreError):
    """Stored bytes no longer match the sha256 recorded at registration."""


class CheckUnavailable(StoreError):
    """No one could run the model check in time (no worker answered); nothing was registered."""
