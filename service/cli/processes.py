"""`kiln serve`, `kiln gateway`, `kiln worker`, `kiln trainer`: the platform's processes."""

import os
import tempfile
from typing import Annotated

import typer

from service.settings import Settings

Opt = typer.Option
Host = Annotated[str, Opt(help="address to listen on")]
Port = Annotated[int, Opt(help="port to listen on")]
Threads = Annotated[int, Opt(help="intra-op threads (0: runtime default)")]
MetricsPort = Annotated[int, Opt(help="serve /metrics here (0: off)")]
MetricsHost = Annotated[str, Opt(help="address for /metrics")]


def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    data_dir: Annotated[str | None, Opt(help="default: $KILN_DATA_DIR or .kiln")] = None,
    workers: Annotated[int, Opt(help="inference worker processes")] = 1,
    demo: Annotated[bool, Opt("--demo", help="register the demo model, print a curl")] = False,
    metrics_port: Annotated[
        int | None,
        Opt(
            help="serve Prometheus /metrics here (default: --port + 1, or a free port; 0: off)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """the whole platform in one command (embedded mode)"""
    from service.cli.embedded_serve import ServeOptions
    from service.cli.embedded_serve import serve as run_serve

    raise typer.Exit(run_serve(ServeOptions(host, port, data_dir, workers, demo, metrics_port)))


def gateway(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    workers: Annotated[int, Opt(help="gateway processes")] = 1,
    metrics_port: Annotated[
        int | None, Opt(help="serve /metrics here (default $KILN_METRICS_PORT; 0: off)", show_default=False)
    ] = None,
    metrics_host: Annotated[
        str | None, Opt(help="default $KILN_METRICS_HOST or 127.0.0.1", show_default=False)
    ] = None,
) -> None:
    """the HTTP gateway"""
    import uvicorn

    from service.cli.procs import serve_metrics

    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="kiln-prom-")
    settings = Settings()
    m_port = metrics_port if metrics_port is not None else settings.metrics_port
    if m_port:
        serve_metrics(settings, metrics_host or settings.metrics_host, m_port)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )


def worker(
    threads: Threads = 0, metrics_port: MetricsPort = 0, metrics_host: MetricsHost = "127.0.0.1"
) -> None:
    """an inference worker"""
    from service.cli.run_worker import run_worker

    raise typer.Exit(run_worker(threads, metrics_port, metrics_host))


def trainer(
    threads: Threads = 0, metrics_port: MetricsPort = 0, metrics_host: MetricsHost = "127.0.0.1"
) -> None:
    """a fine-tune trainer (takes jobs from the queue)"""
    from service.cli.run_trainer import run_trainer

    raise typer.Exit(run_trainer(threads, metrics_port, metrics_host))
