"""`kiln trainer` and `kiln finetune ...` (hooked into service/cli/main.py's parser by add_parsers)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from service.settings import Settings


# trainer process --------------------------------------------------------------------------------
def cmd_trainer(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import redis
    import torch

    from model_store.blobs import BlobStore
    from model_store.db import make_db_engine, make_sessionmaker
    from model_store.jobs import JobStore
    from model_store.registry import Registry
    from workers.contract.redis_keys import RedisKeys
    from workers.finetune.fence import FenceLimits
    from workers.finetune.metrics import TrainerMetrics
    from workers.finetune.trainer import Trainer, TrainerConfig

    settings = Settings()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host)
    sessions = make_sessionmaker(make_db_engine(settings.resolved_database_url))
    blobs = BlobStore(settings.blob_dir)
    client = redis.Redis.from_url(settings.resolved_redis_url, socket_timeout=30, socket_connect_timeout=5)
    trainer = Trainer(
        client,
        RedisKeys(settings.redis_prefix),
        Registry(sessions, blobs, settings.upload_check),
        blobs,
        JobStore(sessions),
        TrainerConfig(
            lease_s=settings.trainer_lease_s,
            renew_interval_s=settings.trainer_renew_interval_s,
            reconcile_interval_s=settings.trainer_reconcile_interval_s,
            claim_idle_ms=settings.trainer_claim_idle_ms,
            limits=replace(FenceLimits.from_settings(settings), threads=args.threads),
        ),
        TrainerMetrics(),
    )
    trainer.install_signal_handlers()
    trainer.run()
    return 0


# client commands --------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> Any:
    from service.cli.client import KilnClient

    logging.getLogger("httpx").setLevel(logging.WARNING)
    return KilnClient(args.url, args.key)


def _file_id(client: Any, ref: str | None) -> str | None:
    if ref is None or not Path(ref).is_file():
        return ref
    uploaded = client.upload_file(Path(ref))
    print(f"uploaded {ref} as {uploaded['id']} ({uploaded['stats'].get('rows')} rows)", file=sys.stderr)
    return str(uploaded["id"])


def _job_body(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    hp: dict[str, Any] = json.loads(args.hyperparameters) if args.hyperparameters else {}
    for key in ("epochs", "batch_size", "learning_rate", "optimizer"):
        value = getattr(args, key)
        if value is not None:
            hp[key] = value
    body: dict[str, Any] = {
        "model": args.model,
        "training_file": _file_id(client, args.training_file),
        "task": args.task,
        "hyperparameters": hp,
    }
    optional = {
        "validation_file": _file_id(client, args.validation_file),
        "suffix": args.suffix,
        "target_model": args.target_model,
        "seed": args.seed,
        "validation_split": args.validation_split,
        "promote": args.promote,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    named = args.model.split(":", 1)[0]
    if args.promote and args.target_model is None:
        result = f"{named}-{args.suffix or 'ft'}"
        print(
            f"note: --promote moves the alias {args.promote!r} of the result model {result!r}, not of "
            f"{named!r}; give --target-model {named} to make the result a version of {named!r}",
            file=sys.stderr,
        )
    return body


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    p = job.get("progress") or {}
    total, step = int(p.get("total_steps") or 0), int(p.get("step") or 0)
    frac = step / total if total else (1.0 if job["status"] == "succeeded" else 0.0)
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    loss = f" loss {p['train_loss']:.4f}" if "train_loss" in p else ""
    return f"\r[{bar}] {frac:4.0%} step {step}/{total} epoch {p.get('epoch', 0)}{loss} {job['status']:<10}"


def cmd_finetune_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.create_job(
            dry_run=args.dry_run, idempotency_key=args.idempotency_key, **_job_body(args, client)
        )
        if args.dry_run or not args.watch:
            print(json.dumps(job, indent=2))
            return 0
        job = client.wait_job(job["id"], on_update=lambda j: print(progress_line(j), end="", file=sys.stderr))
        print(file=sys.stderr)
        print(json.dumps(job, indent=2))
        return 0 if job["status"] == "succeeded" else 1


def cmd_finetune_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        calls = {
            "get": client.get_job,
            "cancel": client.cancel_job,
            "pause": client.pause_job,
            "resume": client.resume_job,
            "events": client.events,
            "checkpoints": client.checkpoints,
            "metrics": client.metrics,
        }
        print(json.dumps(calls[args.ft_cmd](args.job), indent=2))
    return 0


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


def cmd_finetune_plot(args: argparse.Namespace) -> int:
    with _client(args) as client:
        plot_curves(client.metrics(args.job), Path(args.output), title=args.job)
    print(args.output)
    return 0


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("KILN_URL", "http://127.0.0.1:8000"))
    p.add_argument("--key", default=os.environ.get("KILN_API_KEY", ""))


def _create_parser(ft: Any) -> None:
    c = ft.add_parser("create", help="create a fine-tune job (file paths are uploaded first)")
    c.add_argument("--model", required=True, help="name, name:version or name:alias")
    c.add_argument("--training-file", required=True, help="a file id or a local JSONL/CSV path")
    c.add_argument("--validation-file")
    c.add_argument("--validation-split", type=float)
    c.add_argument("--task", default="classification", choices=["classification", "regression"])
    names = c.add_mutually_exclusive_group()
    names.add_argument("--suffix", help="the result is a new model {model}-{suffix} (default: -ft)")
    names.add_argument("--target-model", help="the result is the next version of this model")
    c.add_argument("--seed", type=int)
    c.add_argument(
        "--promote",
        help="alias of the result's model to move to the result if it beats what the alias serves now "
        "(on the job's validation data)",
    )
    c.add_argument("--epochs", type=int)
    c.add_argument("--batch-size", type=int)
    c.add_argument("--learning-rate", type=float)
    c.add_argument("--optimizer")
    c.add_argument("--hyperparameters", help="JSON object of further hyperparameters")
    c.add_argument("--idempotency-key")
    c.add_argument("--dry-run", action="store_true")
    c.add_argument("--watch", action="store_true", help="show a progress bar until the job finishes")
    _connection(c)
    c.set_defaults(func=cmd_finetune_create)


def add_parsers(sub: Any) -> None:
    t = sub.add_parser("trainer", help="a fine-tune trainer (takes jobs from the queue)")
    t.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    t.add_argument("--metrics-port", type=int, default=0, help="serve /metrics here (0: off)")
    t.add_argument("--metrics-host", default="127.0.0.1")
    t.set_defaults(func=cmd_trainer)

    ft = sub.add_parser("finetune", help="fine-tune jobs").add_subparsers(dest="ft_cmd", required=True)
    _create_parser(ft)
    for name in ("get", "cancel", "pause", "resume", "events", "checkpoints", "metrics"):
        g = ft.add_parser(name, help=f"{name} a job")
        g.add_argument("job")
        _connection(g)
        g.set_defaults(func=cmd_finetune_get)
    p = ft.add_parser("plot", help="draw train and validation curves to a PNG")
    p.add_argument("job")
    p.add_argument("-o", "--output", default="curve.png")
    _connection(p)
    p.set_defaults(func=cmd_finetune_plot)
