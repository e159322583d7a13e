"""Errors of the queue and the workers. Never HTTP exceptions: the gateway maps them."""


class EngineError(Exception):
    """Base class for errors between the gateway and the workers."""


class EngineUnavailable(EngineError):
    """Redis cannot be reached, or the connection broke while a request was in flight."""


class QueueFull(EngineError):
    """The version's queue already holds max_queue_size requests."""


class ReplyTimeout(EngineError):
    """No reply arrived before the request's deadline."""


class LoadError(EngineError):
    """A model version could not be loaded (integrity, format, device)."""
