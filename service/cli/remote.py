"""The options every client command shares (--url, --key) and the client they make."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from service.cli.client import KilnClient

Url = Annotated[str, typer.Option(envvar="KILN_URL", help="the gateway ($KILN_URL)")]
Key = Annotated[
    str, typer.Option(envvar="KILN_API_KEY", help="an API key ($KILN_API_KEY)", show_default=False)
]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
DEFAULT_URL = "http://127.0.0.1:8000"


def connect(url: str, key: str) -> KilnClient:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no INFO line per request
    return KilnClient(url, key)
