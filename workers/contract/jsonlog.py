"""Structured logs: one JSON object per line, used by the gateway and the worker alike.

A request id follows a request: the gateway makes it (and returns it as `X-Request-ID`), it
travels to the worker in the wire header (`id`), and both sides log it as `request_id`.
Per-request lines go to the `kiln.requests` logger, on only when asked (KILN_LOG_REQUESTS):
one line per request on the gateway, one per reply on the worker.
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

request_id_var: ContextVar[str | None] = ContextVar("kiln_request_id", default=None)
request_log = logging.getLogger("kiln.requests")

_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime", "taskName"}
)
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """ts, level, logger, msg, pid, request_id (from the record or the context), then any
    `extra=` fields; exceptions as one string."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process or os.getpid(),
        }
        rid = record.__dict__.get("request_id") or request_id_var.get()
        if rid:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not the one it was made with:
    a stream swapped and closed since (pytest's capture, a daemonised process) loses no record and
    raises nothing (as logging's own last-resort handler does)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(fmt: str = "text", level: str = "INFO", requests: bool = False) -> None:
    """Set up the root logger once per process (again: only the format and levels change)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_kiln", False)), None)
    if handler is None:
        handler = _StderrHandler()
        handler._kiln = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    root.setLevel(level.upper())
    request_log.setLevel(logging.INFO if requests else logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
