"""`kiln files ...` (fine-tuning datasets) and `kiln usage`: over HTTP."""

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.output import print_json, table, upload_progress
from service.cli.remote import DEFAULT_URL, AsJson, Key, Url, connect

files_app = typer.Typer(help="fine-tuning datasets (over HTTP)", no_args_is_help=True)


def when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return str(ts or "-")
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@files_app.command("list")
def list_files(url: Url = DEFAULT_URL, key: Key = "", as_json: AsJson = False) -> None:
    """the tenant's uploaded datasets"""
    with connect(url, key) as client:
        files = client.list_files()
    if as_json:
        print_json(files)
        return
    rows = [
        (f["id"], f["filename"], f["format"], f["stats"].get("rows"), f["bytes"], when(f["created_at"]))
        for f in files
    ]
    table("files", ["id", "filename", "format", "rows", "bytes", "created"], rows)


@files_app.command("upload")
def upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a JSONL or CSV dataset")],
    purpose: str = "fine-tune",
    url: Url = DEFAULT_URL,
    key: Key = "",
) -> None:
    """upload a dataset (validated by the server: a bad one is refused naming lines and fields)"""
    with connect(url, key) as client, upload_progress(f"uploading {path.name}") as progress:
        print_json(client.upload_file(path, purpose, progress=progress))


@files_app.command("delete")
def delete(
    file_id: Annotated[str, typer.Argument(metavar="FILE_ID")], url: Url = DEFAULT_URL, key: Key = ""
) -> None:
    """delete a dataset"""
    with connect(url, key) as client:
        print_json(client.delete_file(file_id))


class GroupBy(StrEnum):
    model = "model"
    key = "key"
    day = "day"


def usage(
    start: Annotated[
        str | None, typer.Option("--from", help="first UTC day, YYYY-MM-DD (default: month start)")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="last UTC day (default: today)")] = None,
    group_by: Annotated[GroupBy, typer.Option(help="one row per model, key or day")] = GroupBy.model,
    url: Url = DEFAULT_URL,
    key: Key = "",
    as_json: AsJson = False,
) -> None:
    """the tenant's usage: requests, items, compute seconds, prompt and completion tokens"""
    with connect(url, key) as client:
        report = client.usage(start, end, group_by.value)
    if as_json:
        print_json(report)
        return
    group = {"model": "model", "key": "key_id", "day": "day"}[group_by.value]
    print(f"usage from {report['from']} to {report['to']}, by {group_by.value}")
    rows = [(r.get(group), *_usage_cells(r)) for r in report["data"]]
    if rows:
        rows.append(("total", *_usage_cells(report["total"])))
    columns = [group_by.value, "requests", "items", "compute s", "prompt tokens", "completion tokens"]
    table("usage in this period", columns, rows)


def _usage_cells(row: dict[str, Any]) -> tuple[Any, ...]:
    """A usage row's measures, in the table's order (tokens: text generation; 0 when the server
    reports none)."""
    return (
        row["requests"],
        row["items"],
        row["compute_s"],
        row.get("prompt_tokens", 0),
        row.get("completion_tokens", 0),
    )
