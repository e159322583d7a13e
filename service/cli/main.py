"""`kiln`: run the platform (serve, gateway, worker, trainer), manage the database on the host, and
keys, tenants, models, datasets, fine-tune jobs and usage over HTTP.

Every expected failure is one line on stderr and a non-zero exit: an API error names the HTTP
status and the server's message, a server that does not answer says so. No tracebacks."""

import contextlib
import logging
import sys

import typer

from service.cli import processes
from service.cli.admin import db_app
from service.cli.client import KilnError, NoAnswer, Unreachable
from service.cli.compress import compress_app
from service.cli.files import files_app, usage
from service.cli.finetune import finetune_app
from service.cli.keys import keys_app, tenants_app
from service.cli.models import models_app
from service.cli.output import Refused, error
from service.cli.remote import ROOT_TIMEOUT, Timeout
from service.cli.sweeps import sweeps_app
from service.settings import Settings

log = logging.getLogger("kiln")

app = typer.Typer(
    name="kiln",
    help="modelkiln: models as a service",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _options(timeout: Timeout = None) -> None:
    """modelkiln: models as a service"""
    ROOT_TIMEOUT.set(timeout)  # every command's client waits this long (service/cli/remote.py)


app.command("serve")(processes.serve)
app.command("gateway")(processes.gateway)
app.command("worker")(processes.worker)
app.command("trainer")(processes.trainer)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(models_app, name="models")
app.add_typer(files_app, name="files")
app.add_typer(finetune_app, name="finetune")
app.add_typer(sweeps_app, name="sweeps")
app.add_typer(compress_app, name="compress")
app.command("usage")(usage)


def _setup_logging() -> None:
    from pydantic import ValidationError

    from workers.contract import jsonlog

    try:
        s = Settings()
    except ValidationError:  # the command itself reports bad settings
        jsonlog.configure()
    else:
        jsonlog.configure(s.log_format, s.log_level, s.log_requests)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no INFO line per request
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def _one_line(exc: BaseException) -> str | None:
    """The message for an expected failure, or None for a bug (which keeps its traceback)."""
    from pydantic import ValidationError

    from model_store.errors import StoreError
    from service.cli.bundle_pack import NotPackable

    if isinstance(exc, KilnError):
        return f"HTTP {exc.status}: {exc.message}"
    if isinstance(exc, Unreachable | NoAnswer | Refused | StoreError | NotPackable):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}"
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        return f"invalid {exc.title}: {where + ': ' if where else ''}{first.get('msg')}"
    if type(exc).__module__.startswith("sqlalchemy") and type(exc).__name__ == "OperationalError":
        return f"cannot reach the database ({str(getattr(exc, 'orig', exc)).splitlines()[0]})"
    return None


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    try:
        result = app(args=argv, prog_name="kiln", standalone_mode=False)
    except typer.TyperException as e:  # a usage error: the usage line and the message, exit 2
        show = getattr(e, "show", None)
        if show is not None:
            show()
        else:
            error(e.message)
        return int(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        return 130
    except Exception as e:
        message = _one_line(e)
        if message is None:
            raise
        error(message)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
