"""What the command line prints: JSON for single objects (scripts parse it), rich tables for
lists, one-line errors on stderr, and an upload progress bar when stderr is a terminal."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table


class Refused(Exception):
    """A request the command line itself turns down (one line on stderr, exit 1)."""


stdout = Console(highlight=False, soft_wrap=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str), flush=True)


def error(message: str) -> None:
    """One line on stderr, never markup-interpreted."""
    first = " ".join(str(message).split())
    print(f"kiln: {first}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stdout; an empty list says so instead of printing a bare header."""
    if not rows:
        stdout.print(f"no {title}", markup=False)
        return
    t = Table(title=None, show_lines=False, header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    stdout.print(t)


@contextlib.contextmanager
def upload_progress(label: str) -> Iterator[Callable[[int], Callable[[int], None]]]:
    """Yields `start(total_bytes) -> advance(n)` for KilnClient uploads; draws a bar on stderr
    only when stderr is a terminal (logs and pipes get no bar lines)."""
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )

    def start(total: int) -> Callable[[int], None]:
        task = bar.add_task(label, total=total)
        return lambda n: bar.advance(task, n)

    with bar:
        yield start
