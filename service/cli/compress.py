"""`kiln compress ...`: compression jobs over HTTP (create, list, get, cancel, events, watch)."""

import json
import logging
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.client import KilnClient
from service.cli.output import note, print_json, table
from service.cli.remote import DEFAULT_URL, AsJson, Key, Url

compress_app = typer.Typer(
    help="compression jobs: quantize, prune, distill, export (over HTTP)", no_args_is_help=True
)
JOBS = "/v1/compression/jobs"
TERMINAL = ("succeeded", "failed", "cancelled")
Opt = typer.Option


class Method(StrEnum):
    quantize = "quantize"
    prune = "prune"
    distill = "distill"
    export = "export"


class CompressClient(KilnClient):
    def __enter__(self) -> "CompressClient":
        return self

    def create_compression(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return dict(self._check(self._http.post(JOBS, json=body, headers=headers)))

    def compression(self, job_id: str, what: str = "", method: str = "GET") -> dict[str, Any]:
        return dict(self._check(self._http.request(method, f"{JOBS}/{job_id}{what}")))

    def list_compressions(self, after: str | None, limit: int) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        return dict(self._check(self._http.get(JOBS, params=params)))


def _client(url: str, key: str) -> CompressClient:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return CompressClient(url, key)


def _file_id(client: KilnClient, ref: str | None) -> str | None:
    if ref is None or not Path(ref).is_file():
        return ref
    uploaded = client.upload_file(Path(ref))
    note(f"uploaded {ref} as {uploaded['id']}")
    return str(uploaded["id"])


def status_line(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    step = f" step {p['step']} loss {p.get('train_loss', 0):.4f}" if "step" in p else ""
    return f"\r{job['method']} {job['status']:<10}{step}"


def comparison_rows(cmp: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Parent vs result, one row per measure (for `watch` and `get`)."""
    parent, result = cmp.get("parent", {}), cmp.get("result", {})
    rows: list[tuple[Any, ...]] = [("artifact bytes", parent.get("bytes"), result.get("bytes"))]
    for n in (1, 32):
        k = f"p50_batch_{n}"
        rows.append(
            (
                f"latency p50 ms, batch {n}",
                parent.get("latency_ms", {}).get(k),
                result.get("latency_ms", {}).get(k),
            )
        )
    if "accuracy" in parent:
        rows.append(("validation accuracy", parent["accuracy"], result.get("accuracy")))
    for k in ("max_abs_diff", "cosine_min"):
        if k in cmp:
            rows.append((k, "", cmp[k]))
    return rows


def _watch(client: CompressClient, job: dict[str, Any]) -> dict[str, Any]:
    while job["status"] not in TERMINAL:
        print(status_line(job), end="", file=sys.stderr)
        time.sleep(0.5)
        job = client.compression(job["id"])
    print(status_line(job), file=sys.stderr)
    if job.get("comparison"):
        table(
            f"{job['model']} -> {job.get('result_model')}",
            ["", "parent", "result"],
            comparison_rows(job["comparison"]),
        )
    return job


@compress_app.command("create")
def create(
    model: Annotated[str, Opt(help="name, name:version or name:alias")],
    method: Annotated[Method, Opt()],
    parameters: Annotated[str | None, Opt(help='JSON object, e.g. {"sparsity": 0.5}')] = None,
    training_file: Annotated[str | None, Opt(help="a file id or a local JSONL/CSV path")] = None,
    validation_file: Annotated[str | None, Opt(help="a file id or a local JSONL/CSV path")] = None,
    suffix: Annotated[
        str | None, Opt(help="the result is a new model MODEL-SUFFIX (default: -METHOD)")
    ] = None,
    target_model: Annotated[str | None, Opt()] = None,
    seed: Annotated[int | None, Opt()] = None,
    promote: Annotated[
        str | None, Opt(help="alias of the result's model, moved if the result beats it")
    ] = None,
    idempotency_key: Annotated[str | None, Opt()] = None,
    watch: Annotated[bool, Opt("--watch", help="follow the job and show the comparison")] = False,
    url: Url = DEFAULT_URL,
    key: Key = "",
) -> None:
    """create a compression job (file paths are uploaded first)"""
    with _client(url, key) as client:
        body: dict[str, Any] = {
            "model": model,
            "method": method.value,
            "parameters": json.loads(parameters or "{}"),
        }
        optional = {
            "training_file": _file_id(client, training_file),
            "validation_file": _file_id(client, validation_file),
            "suffix": suffix,
            "target_model": target_model,
            "seed": seed,
            "promote": promote,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        job = client.create_compression(body, idempotency_key)
        if watch:
            job = _watch(client, job)
    print_json(job)
    if watch and job["status"] != "succeeded":
        raise typer.Exit(1)


@compress_app.command("watch")
def watch_job(job: str, url: Url = DEFAULT_URL, key: Key = "") -> None:
    """follow a job until it finishes and show its comparison with the parent"""
    with _client(url, key) as client:
        found = _watch(client, client.compression(job))
    if found["status"] != "succeeded":
        raise typer.Exit(1)


@compress_app.command("list")
def list_jobs(
    limit: Annotated[int, Opt()] = 20,
    after: Annotated[str | None, Opt()] = None,
    url: Url = DEFAULT_URL,
    key: Key = "",
    as_json: AsJson = False,
) -> None:
    """the tenant's compression jobs, newest first"""
    with _client(url, key) as client:
        page = client.list_compressions(after, limit)
    if as_json:
        print_json(page)
        return
    rows = [(j["id"], j["model"], j["method"], j["status"], j.get("result_model")) for j in page["data"]]
    table("compression jobs", ["id", "model", "method", "status", "result"], rows)


def _job_command(name: str, what: str, method: str) -> None:
    def command(job: str, url: Url = DEFAULT_URL, key: Key = "") -> None:
        with _client(url, key) as client:
            print_json(client.compression(job, what, method))

    compress_app.command(name, help=f"{name} a compression job")(command)


for _name, _what, _method in (
    ("get", "", "GET"),
    ("cancel", "/cancel", "POST"),
    ("events", "/events", "GET"),
):
    _job_command(_name, _what, _method)
