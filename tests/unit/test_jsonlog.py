"""The JSON log formatter the gateway and the worker share."""

from __future__ import annotations

import json
import logging

from workers.contract.jsonlog import JsonFormatter, request_id_var


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("kiln.test", logging.INFO, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    return record


def test_one_json_object_with_extras_and_the_request_id() -> None:
    line = JsonFormatter().format(_record("infer %s", request_id="abc", model="m", version=2))
    d = json.loads(line)
    assert d["msg"] == "infer %s" and d["level"] == "INFO" and d["logger"] == "kiln.test"
    assert d["request_id"] == "abc" and d["model"] == "m" and d["version"] == 2
    assert "\n" not in line


def test_request_id_from_the_context() -> None:
    token = request_id_var.set("ctx-id")
    try:
        d = json.loads(JsonFormatter().format(_record("x")))
    finally:
        request_id_var.reset(token)
    assert d["request_id"] == "ctx-id"
    assert "request_id" not in json.loads(JsonFormatter().format(_record("x")))


def test_exceptions_and_odd_values_stay_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("kiln", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    record.__dict__["obj"] = object()
    line = JsonFormatter().format(record)
    d = json.loads(line)
    assert "ValueError: boom" in d["exc"] and "obj" in d


def test_the_handler_writes_to_stderr_as_it_is_now_not_as_it_was(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """A stream swapped and closed after configure() (pytest's capture, a daemonised process) is no
    'I/O operation on closed file' error: records go to the current sys.stderr."""
    import io
    import logging
    import sys

    from workers.contract import jsonlog

    gone = io.StringIO()
    monkeypatch.setattr(sys, "stderr", gone)
    jsonlog.configure()
    gone.close()
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)
    logging.getLogger("kiln.test").warning("still written")
    assert "still written" in now.getvalue()
