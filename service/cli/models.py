"""`kiln models ...`: over HTTP, like any client (push, list, get, alias, rollback)."""

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.output import Refused, print_json, table, upload_progress
from service.cli.remote import DEFAULT_URL, AsJson, Key, Url, connect

models_app = typer.Typer(help="models, versions and aliases (over HTTP)", no_args_is_help=True)


class Format(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"
    hf_encoder = "hf-encoder"
    hf_causal_lm = "hf-causal-lm"


def json_arg(raw: str | None) -> Any:
    """A JSON value given inline, or as @file."""
    if not raw:
        return None
    try:
        if raw.startswith("@"):
            return json.loads(Path(raw[1:]).read_text())
        return json.loads(raw)
    except (OSError, ValueError) as e:
        raise typer.BadParameter(f"not JSON or not readable: {e}") from None


@models_app.command("push")
def push(
    name: str,
    file: Annotated[
        Path,
        typer.Argument(
            help="the artifact, or a directory (packed as a tar bundle: hf-encoder, hf-causal-lm)"
        ),
    ],
    format: Annotated[Format, typer.Option("--format", help="the artifact's format")],
    signature: Annotated[str | None, typer.Option(help="JSON, or @file")] = None,
    config: Annotated[str | None, typer.Option(help="JSON, or @file")] = None,
    description: str = "",
    url: Url = DEFAULT_URL,
    key: Key = "",
) -> None:
    """create the model if needed and upload a new version"""
    sig, cfg = json_arg(signature), json_arg(config)
    with connect(url, key) as client, upload_progress(f"uploading {file.name}") as progress:
        result = client.push_model(
            name, file, format.value, signature=sig, config=cfg, description=description, progress=progress
        )
    print_json(result)


@models_app.command("list")
def list_models(url: Url = DEFAULT_URL, key: Key = "", as_json: AsJson = False) -> None:
    """the tenant's models, their versions and aliases"""
    with connect(url, key) as client:
        models = client.list_models()
    if as_json:
        print_json(models)
        return
    rows = [
        (
            m["name"],
            m["versions"][-1] if m["versions"] else None,
            len(m["versions"]),
            m["aliases"],
            m["description"],
        )
        for m in models
    ]
    table("models", ["name", "latest", "versions", "aliases", "description"], rows)


@models_app.command("get")
def get(
    name: str,
    version: Annotated[
        str | None, typer.Argument(help="a version number or alias: show that version")
    ] = None,
    url: Url = DEFAULT_URL,
    key: Key = "",
) -> None:
    """a model (versions, aliases), or one of its versions (format, signature, config)"""
    with connect(url, key) as client:
        print_json(client.get_version(name, version) if version else client.get_model(name))


@models_app.command("alias")
def alias(name: str, alias: str, version: int, url: Url = DEFAULT_URL, key: Key = "") -> None:
    """point ALIAS of model NAME at VERSION (e.g. kiln models alias demo production 3)"""
    with connect(url, key) as client:
        print_json(client.set_alias(name, alias, version))


def previous_version(model: dict[str, Any], alias: str) -> int:
    """The highest version below the one `alias` points at (the server keeps no alias history)."""
    current = model["aliases"].get(alias)
    if current is None:
        raise Refused(f"model {model['name']!r} has no alias {alias!r}")
    older = [v for v in model["versions"] if v < current]
    if not older:
        raise Refused(f"{alias!r} is at version {current}, the oldest; nothing to roll back to")
    return max(older)


@models_app.command("rollback")
def rollback(
    name: str,
    alias: Annotated[str, typer.Argument(help="the alias to move back")] = "production",
    to: Annotated[int | None, typer.Option(help="this version (default: the one before)")] = None,
    url: Url = DEFAULT_URL,
    key: Key = "",
) -> None:
    """move ALIAS back to the previous version (or to --to VERSION)"""
    with connect(url, key) as client:
        target = to if to is not None else previous_version(client.get_model(name), alias)
        print_json(client.set_alias(name, alias, target))


@models_app.command("download")
def download(
    name: str,
    version: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the artifact")],
    url: Url = DEFAULT_URL,
    key: Key = "",
) -> None:
    """stream a version's artifact to a file (needs manage; the model's owner only)"""
    part = output.with_name(output.name + ".part")
    try:
        with connect(url, key) as client, part.open("wb") as out:
            etag, digest = client.download_version(name, version, out)
        if etag and digest != etag:
            raise typer.BadParameter(f"downloaded bytes hash to {digest}, the server said {etag}")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(output)
    print(f"{output} sha256 {digest}")
