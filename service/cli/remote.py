"""The options every client command shares (--url, --key) and the client they make."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Annotated

import typer

from service.cli.client import KilnClient

Url = Annotated[str, typer.Option(envvar="KILN_URL", help="the gateway ($KILN_URL)")]
Key = Annotated[
    str, typer.Option(envvar="KILN_API_KEY", help="an API key ($KILN_API_KEY)", show_default=False)
]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
Timeout = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        envvar="KILN_TIMEOUT",
        min=1,
        help="seconds to wait for the server's answer ($KILN_TIMEOUT; default 120, a dry run 900)",
        show_default=False,
    ),
]
DEFAULT_URL = "http://127.0.0.1:8000"


# `kiln --timeout` ($KILN_TIMEOUT), set by the root command (service/cli/main.py) for the command it runs
ROOT_TIMEOUT: ContextVar[float | None] = ContextVar("kiln_root_timeout", default=None)


def connect(url: str, key: str, timeout: float | None = None) -> KilnClient:
    """The client of a command: its own --timeout, else `kiln --timeout` ($KILN_TIMEOUT)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no INFO line per request
    return KilnClient(url, key, timeout or ROOT_TIMEOUT.get())
