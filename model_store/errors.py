"""Errors raised by the model store. The gateway maps them to HTTP in one place."""


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
