"""`kiln sweeps ...`: hyperparameter sweeps over HTTP (create, list, get, watch, cancel, promote,
plot). `plot` draws the sweep's metric against each hyperparameter (matplotlib, imported only
there: the worker extra carries it)."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.files import when
from service.cli.finetune import JobRequest, Task, job_body
from service.cli.output import print_json, table
from service.cli.remote import DEFAULT_URL, AsJson, Key, Url, connect

sweeps_app = typer.Typer(help="hyperparameter sweeps (over HTTP)", no_args_is_help=True)
Opt = typer.Option


def parse_param(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME=log_uniform:LOW:HIGH`, `NAME=uniform:LOW:HIGH`, `NAME=int:LOW:HIGH[:STEP]` or
    `NAME=choice:V1,V2,...` (numbers stay numbers) -> (NAME, the space entry)."""
    name, sep, spec = text.partition("=")
    kind, _, rest = spec.partition(":")
    if not sep or not name or not rest:
        raise typer.BadParameter(
            f"{text!r}: expected NAME=KIND:..., e.g. learning_rate=log_uniform:1e-4:1e-1"
        )
    parts = rest.split(",") if kind == "choice" else rest.split(":")
    try:
        if kind in ("uniform", "log_uniform") and len(parts) == 2:
            return name, {"type": kind, "low": float(parts[0]), "high": float(parts[1])}
        if kind == "int" and len(parts) in (2, 3):
            entry: dict[str, Any] = {"type": "int", "low": int(parts[0]), "high": int(parts[1])}
            return name, entry | ({"step": int(parts[2])} if len(parts) == 3 else {})
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r}: {exc}") from None
    if kind == "choice":
        return name, {"type": "choice", "values": [_scalar(p) for p in parts]}
    raise typer.BadParameter(
        f"{text!r}: KIND is uniform:LOW:HIGH, log_uniform:LOW:HIGH, int:LOW:HIGH or choice:A,B"
    )


def _scalar(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float | str) and not isinstance(value, bool) else text


def sweep_body(
    req: JobRequest, client: Any, search: dict[str, Any], params: list[str], space_json: str | None
) -> dict[str, Any]:
    """The JSON body of POST /v1/fine_tuning/sweeps (a job's body plus search and space)."""
    body = job_body(req, client)
    space: dict[str, Any] = json.loads(space_json) if space_json else {}
    space.update(parse_param(p) for p in params)
    if not space:
        raise typer.BadParameter("give the space to search: --param NAME=KIND:... or --space JSON")
    return {**body, "search": {k: v for k, v in search.items() if v is not None}, "space": space}


@sweeps_app.command("create")
def create(
    model: Annotated[str, Opt(help="name, name:version or name:alias")],
    training_file: Annotated[str, Opt(help="a file id or a local JSONL/CSV path")],
    method: Annotated[str, Opt(help="grid, random or bayesian (Optuna's TPE)")] = "grid",
    param: Annotated[list[str], Opt("--param", "-p", help="NAME=KIND:... (repeatable)")] = [],  # noqa: B006
    space: Annotated[str | None, Opt(help="the space as a JSON object")] = None,
    max_trials: Annotated[int | None, Opt(help="default for grid: every point")] = None,
    parallel: Annotated[int, Opt(help="trials at once")] = 1,
    metric: Annotated[str | None, Opt(help="accuracy, valid_loss or r2")] = None,
    direction: Annotated[str | None, Opt(help="maximize or minimize")] = None,
    early_termination: Annotated[bool, Opt("--early-termination", help="median pruner")] = False,
    validation_file: Annotated[str | None, Opt()] = None,
    validation_split: Annotated[float | None, Opt()] = None,
    task: Annotated[Task, Opt()] = Task.classification,
    suffix: Annotated[str | None, Opt(help="trials make versions of MODEL-SUFFIX (default -sweep)")] = None,
    target_model: Annotated[str | None, Opt()] = None,
    seed: Annotated[int | None, Opt()] = None,
    promote: Annotated[
        str | None, Opt(help="alias to move to the best trial if it beats what it serves")
    ] = None,
    hyperparameters: Annotated[str | None, Opt(help="JSON object of base hyperparameters")] = None,
    idempotency_key: Annotated[str | None, Opt()] = None,
    watch: Annotated[bool, Opt("--watch", help="follow the trials until the sweep finishes")] = False,
    url: Url = DEFAULT_URL,
    key: Key = "",
) -> None:
    """create a sweep: each trial is a fine-tune job (file paths are uploaded first)"""
    req = JobRequest(
        model, training_file, task.value, validation_file, validation_split, suffix, target_model, seed,
        hyperparameters=hyperparameters,
    )  # fmt: skip
    search = {
        "method": method,
        "max_trials": max_trials,
        "parallel": parallel,
        "metric": metric,
        "direction": direction,
    }
    with connect(url, key) as client:
        body = sweep_body(req, client, search, param, space)
        if early_termination:
            body["early_termination"] = {"type": "median"}
        if promote:
            body["promote"] = promote
        sweep = client.create_sweep(idempotency_key=idempotency_key, **body)
        if watch:
            sweep = client.wait_sweep(sweep["id"], on_update=_Watcher())
    print_json(sweep)
    if watch and sweep["status"] != "succeeded":
        raise typer.Exit(1)


class _Watcher:
    """Prints a line when a trial changes state or the sweep does (to stderr)."""

    def __init__(self) -> None:
        self.seen: dict[Any, str] = {}

    def __call__(self, sweep: dict[str, Any]) -> None:
        for line in trial_lines(sweep, self.seen):
            print(line, file=sys.stderr)


def trial_lines(sweep: dict[str, Any], seen: dict[Any, str]) -> list[str]:
    out = []
    metric = sweep["search"].get("metric", "")
    for t in sweep["trials"]:
        if seen.get(t["number"]) != t["status"]:
            seen[t["number"]] = t["status"]
            value = f" {metric} {t['value']:.4g}" if t["value"] is not None else ""
            hp = " ".join(f"{k}={v}" for k, v in t["hyperparameters"].items())
            out.append(f"trial {t['number']} {t['status']:<9} {hp}{value} ({t['job_id']})")
    if seen.get("sweep") != sweep["status"]:
        seen["sweep"] = sweep["status"]
        best = sweep.get("best_trial")
        tail = f": best trial {best['number']} {metric} {best['value']:.4g}" if best else ""
        out.append(f"sweep {sweep['id']} {sweep['status']}{tail}")
    return out


@sweeps_app.command("watch")
def watch_sweep(sweep: str, url: Url = DEFAULT_URL, key: Key = "") -> None:
    """follow a sweep's trials until it finishes"""
    with connect(url, key) as client:
        final = client.wait_sweep(sweep, on_update=_Watcher())
    print_json(final)
    if final["status"] != "succeeded":
        raise typer.Exit(1)


@sweeps_app.command("list")
def list_sweeps(
    limit: Annotated[int, Opt(help="at most this many (newest first)")] = 20,
    after: Annotated[str | None, Opt(help="the page after this sweep id")] = None,
    url: Url = DEFAULT_URL,
    key: Key = "",
    as_json: AsJson = False,
) -> None:
    """the tenant's sweeps"""
    with connect(url, key) as client:
        page = client.list_sweeps(after, limit)
    if as_json:
        print_json(page)
        return
    rows = [
        (
            s["id"],
            s["model"],
            s["search"]["method"],
            s["status"],
            len(s["trials"]),
            s.get("fine_tuned_model"),
            when(s["created_at"]),
        )
        for s in page["data"]
    ]
    table("sweeps", ["id", "model", "method", "status", "trials", "best", "created"], rows)
    if page.get("has_more") and page["data"]:
        print(f"more: kiln sweeps list --after {page['data'][-1]['id']}")


@sweeps_app.command("get")
def get(sweep: str, url: Url = DEFAULT_URL, key: Key = "") -> None:
    """a sweep: its trials, best trial and promotion"""
    with connect(url, key) as client:
        print_json(client.get_sweep(sweep))


@sweeps_app.command("cancel")
def cancel(sweep: str, url: Url = DEFAULT_URL, key: Key = "") -> None:
    """cancel a sweep and its unfinished trials"""
    with connect(url, key) as client:
        print_json(client.cancel_sweep(sweep))


@sweeps_app.command("promote")
def promote(
    sweep: str, alias: Annotated[str, Opt(help="e.g. production")], url: Url = DEFAULT_URL, key: Key = ""
) -> None:
    """move ALIAS to the best trial's version if it beats what ALIAS serves now"""
    with connect(url, key) as client:
        client.promote_sweep(sweep, alias)
        final = client.wait_sweep(sweep)
    print_json(final.get("promotion"))


@sweeps_app.command("plot")
def plot(
    sweep: str,
    output: Annotated[Path, Opt("-o", "--output")] = Path("sweep.png"),
    url: Url = DEFAULT_URL,
    key: Key = "",
) -> None:
    """draw the sweep's metric against each hyperparameter to a PNG"""
    from service.cli.sweep_plot import plot_sweep  # matplotlib only here

    with connect(url, key) as client:
        plot_sweep(client.get_sweep(sweep), output)
    print(output)
