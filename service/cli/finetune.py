"""`kiln finetune ...`: fine-tune jobs over HTTP (create, list, get, cancel, ..., plot)."""

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.curve import watch
from service.cli.files import when
from service.cli.output import note, print_json, table
from service.cli.remote import DEFAULT_URL, AsJson, Key, Timeout, Url, connect

finetune_app = typer.Typer(help="fine-tune jobs (over HTTP)", no_args_is_help=True)


class Task(StrEnum):
    classification = "classification"
    regression = "regression"
    causal_lm = "causal-lm"


@dataclass(slots=True)
class JobRequest:
    """`kiln finetune create`'s options, before they become the job's JSON body."""

    model: str
    training_file: str
    task: str | None = None  # None: the server's (causal-lm for an hf-causal-lm, else classification)
    validation_file: str | None = None
    validation_split: float | None = None
    suffix: str | None = None
    target_model: str | None = None
    seed: int | None = None
    promote: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    hyperparameters: str | None = None
    processes: int | None = None  # resources.processes: DDP ranks
    promote_metric: str | None = None
    keep_checkpoints: int | None = None
    lora: bool = False  # train a LoRA adapter (hyperparameters.lora = {} unless given there)


def _file_id(client: Any, ref: str | None) -> str | None:
    if ref is None or not Path(ref).is_file():
        return ref
    uploaded = client.upload_file(Path(ref))
    note(f"uploaded {ref} as {uploaded['id']} ({uploaded['stats'].get('rows')} rows)")
    return str(uploaded["id"])


def job_body(req: JobRequest, client: Any) -> dict[str, Any]:
    """The JSON body of POST /v1/fine_tuning/jobs; local dataset paths are uploaded first."""
    if req.suffix is not None and req.target_model is not None:
        raise typer.BadParameter("give --suffix or --target-model, not both")
    hp: dict[str, Any] = json.loads(req.hyperparameters) if req.hyperparameters else {}
    for name in ("epochs", "batch_size", "learning_rate", "optimizer"):
        if (value := getattr(req, name)) is not None:
            hp[name] = value
    if req.lora:
        hp.setdefault("lora", {})
    body: dict[str, Any] = {
        "model": req.model,
        "training_file": _file_id(client, req.training_file),
        "hyperparameters": hp,
    }
    if req.task is not None:
        body["task"] = req.task
    optional = {
        "validation_file": _file_id(client, req.validation_file),
        "suffix": req.suffix,
        "target_model": req.target_model,
        "seed": req.seed,
        "validation_split": req.validation_split,
        "promote": req.promote,
        "promote_metric": req.promote_metric,
        "keep_checkpoints": req.keep_checkpoints,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if req.processes is not None:
        body["resources"] = {"processes": req.processes}
    named = req.model.split(":", 1)[0]
    if req.promote and req.target_model is None:
        result = f"{named}-{req.suffix or 'ft'}"
        note(
            f"note: --promote moves the alias {req.promote!r} of the result model {result!r}, not of "
            f"{named!r}; give --target-model {named} to make the result a version of {named!r}"
        )
    return body


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    p = job.get("progress") or {}
    total, step = int(p.get("total_steps") or 0), int(p.get("step") or 0)
    frac = step / total if total else (1.0 if job["status"] == "succeeded" else 0.0)
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    loss = f" loss {p['train_loss']:.4f}" if "train_loss" in p else ""
    return f"\r[{bar}] {frac:4.0%} step {step}/{total} epoch {p.get('epoch', 0)}{loss} {job['status']:<10}"


Opt = typer.Option


@finetune_app.command("create")
def create(
    model: Annotated[str, Opt(help="name, name:version or name:alias")],
    training_file: Annotated[str, Opt(help="a file id or a local JSONL/CSV path")],
    validation_file: Annotated[str | None, Opt()] = None,
    validation_split: Annotated[float | None, Opt()] = None,
    task: Annotated[
        Task | None, Opt(help="default: causal-lm for an hf-causal-lm model, else classification")
    ] = None,
    suffix: Annotated[str | None, Opt(help="the result is a new model MODEL-SUFFIX (default: -ft)")] = None,
    target_model: Annotated[str | None, Opt(help="the result is the next version of this model")] = None,
    seed: Annotated[int | None, Opt()] = None,
    promote: Annotated[
        str | None,
        Opt(help="alias of the result's model to move to the result if it beats what it serves now"),
    ] = None,
    epochs: Annotated[int | None, Opt()] = None,
    batch_size: Annotated[int | None, Opt()] = None,
    learning_rate: Annotated[float | None, Opt()] = None,
    optimizer: Annotated[str | None, Opt()] = None,
    hyperparameters: Annotated[str | None, Opt(help="JSON object of further hyperparameters")] = None,
    processes: Annotated[
        int | None, Opt(help="train with DDP on this many processes (1-8; GPUs on a GPU trainer)")
    ] = None,
    promote_metric: Annotated[
        str | None, Opt(help="what promotion and early stopping compare (default accuracy / r2)")
    ] = None,
    keep_checkpoints: Annotated[
        int | None, Opt(help="checkpoints kept at the end beside the best (default 1)")
    ] = None,
    lora: Annotated[
        bool,
        Opt(
            "--lora", help="train a LoRA adapter (always, for an hf-causal-lm); rank etc.: --hyperparameters"
        ),
    ] = False,
    idempotency_key: Annotated[str | None, Opt()] = None,
    dry_run: Annotated[bool, Opt("--dry-run")] = False,
    watch_: Annotated[
        bool, Opt("--watch", help="show a progress bar and the live loss curve until the job finishes")
    ] = False,
    url: Url = DEFAULT_URL,
    key: Key = "",
    timeout: Timeout = None,
) -> None:
    """create a fine-tune job (file paths are uploaded first)"""
    req = JobRequest(
        model, training_file, task.value if task else None, validation_file, validation_split, suffix,
        target_model, seed, promote, epochs, batch_size, learning_rate, optimizer, hyperparameters,
        processes, promote_metric, keep_checkpoints, lora,
    )  # fmt: skip
    with connect(url, key, timeout) as client:
        job = client.create_job(dry_run=dry_run, idempotency_key=idempotency_key, **job_body(req, client))
        if dry_run or not watch_:
            print_json(job)
            return
        job = watch(client.wait_job, job["id"], progress_line)
    print_json(job)
    if job["status"] != "succeeded":
        raise typer.Exit(1)


@finetune_app.command("list")
def list_jobs(
    limit: Annotated[int, Opt(help="at most this many (newest first)")] = 20,
    after: Annotated[str | None, Opt(help="the page after this job id")] = None,
    url: Url = DEFAULT_URL,
    key: Key = "",
    as_json: AsJson = False,
) -> None:
    """the tenant's fine-tune jobs"""
    with connect(url, key) as client:
        page = client.list_jobs(after, limit)
    if as_json:
        print_json(page)
        return
    rows = [
        (
            j["id"],
            j["model"],
            j["status"],
            j.get("fine_tuned_model"),
            when(j["created_at"]),
            when(j.get("finished_at")),
        )
        for j in page["data"]
    ]
    table("fine-tune jobs", ["id", "model", "status", "result", "created", "finished"], rows)
    if page.get("has_more") and page["data"]:
        print(f"more: kiln finetune list --after {page['data'][-1]['id']}")


_JOB_CALLS = {
    "get": "get_job",
    "cancel": "cancel_job",
    "pause": "pause_job",
    "resume": "resume_job",
    "events": "events",
    "checkpoints": "checkpoints",
    "metrics": "metrics",
}


def _job_command(name: str, method: str) -> None:
    def command(job: str, url: Url = DEFAULT_URL, key: Key = "") -> None:
        with connect(url, key) as client:
            print_json(getattr(client, method)(job))

    finetune_app.command(name, help=f"{name} a job")(command)


for _name, _method in _JOB_CALLS.items():
    _job_command(_name, _method)


@finetune_app.command("promote-checkpoint")
def promote_checkpoint(job: str, checkpoint: str, url: Url = DEFAULT_URL, key: Key = "") -> None:
    """make a job's checkpoint the next version of its model (needs manage)"""
    with connect(url, key) as client:
        print_json(client.promote_checkpoint(job, checkpoint))


def plot_curves(metrics: dict[str, Any], out: Path, title: str = "") -> None:
    """Train loss per step and validation loss (and accuracy or R²) per epoch, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, valid = metrics.get("train", []), metrics.get("valid", [])
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train loss", lw=1)
    ax_loss.plot([r["step"] for r in valid], [r["valid_loss"] for r in valid], "o-", label="validation loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    score = "accuracy" if valid and "accuracy" in valid[0] else "r2"
    ax_score.plot([r["epoch"] for r in valid], [r.get(score) for r in valid], "o-", color="tab:green")
    ax_score.set_xlabel("epoch")
    ax_score.set_ylabel(f"validation {score}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


@finetune_app.command("plot")
def plot(
    job: str,
    output: Annotated[Path, Opt("-o", "--output")] = Path("curve.png"),
    url: Url = DEFAULT_URL,
    key: Key = "",
) -> None:
    """draw train and validation curves to a PNG"""
    with connect(url, key) as client:
        plot_curves(client.metrics(job), output, title=job)
    print(output)
