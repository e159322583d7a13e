"""`kiln worker`: build and run an inference worker and, beside it, the generation loop. The
only CLI module that imports workers.inference and workers.generation (lazily, so `kiln --help`
and the client commands never load torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.cli.procs import freeze_startup_objects
from service.settings import Settings

if TYPE_CHECKING:
    from workers.generation.loop import GenerationLoop
    from workers.inference.worker import WorkerConfig


def run_worker(threads: int, metrics_port: int, metrics_host: str) -> int:
    import redis
    from prometheus_client import REGISTRY, start_http_server

    from model_store.blobs import BlobStore
    from model_store.db import make_db_engine, make_sessionmaker
    from model_store.registry import Registry
    from workers.contract.redis_keys import RedisKeys
    from workers.inference.gpu import GpuCollector
    from workers.inference.runners import preload_runtimes
    from workers.inference.worker import Worker

    settings = Settings()
    if metrics_port:
        REGISTRY.register(GpuCollector())
        start_http_server(metrics_port, addr=metrics_host)
    blobs = BlobStore(settings.blob_dir)
    registry = Registry(
        make_sessionmaker(make_db_engine(settings.resolved_database_url)), blobs, settings.upload_check
    )
    client = redis.Redis.from_url(
        settings.resolved_redis_url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30
    )
    worker = Worker(
        client,
        RedisKeys(settings.redis_prefix),
        registry,
        blobs,
        _worker_config(settings, threads, metrics_port),
    )
    generation = _generation(settings, metrics_port, threads) if settings.gen_enabled else None
    if generation is not None:
        worker.extra_info = generation.heartbeat
    preload_runtimes()  # import torch/onnxruntime now, not on the first request
    freeze_startup_objects()
    worker.install_signal_handlers()
    thread = generation.start() if generation is not None else None
    try:
        worker.run()
    finally:
        if generation is not None and thread is not None:
            generation.stop()
            thread.join(15)
    return 0


def _worker_config(settings: Settings, threads: int, metrics_port: int) -> WorkerConfig:
    from workers.inference.worker import WorkerConfig

    return WorkerConfig(
        read_count=settings.worker_read_count,
        claim_idle_ms=settings.claim_idle_ms,
        claim_interval_ms=settings.claim_interval_ms,
        max_deliveries=settings.max_deliveries,
        heartbeat_ttl_s=settings.heartbeat_ttl_s,
        reply_ttl_s=settings.reply_ttl_s,
        async_result_ttl_s=settings.async_result_ttl_s,
        memory_budget_bytes=settings.worker_memory_budget_mb << 20,
        fence=settings.fence,
        model_memory_bytes=settings.model_memory_mb << 20,
        hung_backoff_s=settings.hung_backoff_s,
        max_adapters=settings.max_adapters,
        threads=threads,
        metrics_port=metrics_port,
        artifact_limits=settings.artifact_limits,
    )


def _generation(settings: Settings, metrics_port: int, threads: int) -> GenerationLoop:
    """The generation loop beside the inference loop (its own Redis client and registry)."""
    import redis

    from model_store.blobs import BlobStore
    from model_store.db import make_db_engine, make_sessionmaker
    from model_store.registry import Registry
    from workers.contract.redis_keys import RedisKeys
    from workers.generation.config import GenConfig
    from workers.generation.engine import EngineOptions
    from workers.generation.fenced import GenLoadSettings
    from workers.generation.loader import make_loader
    from workers.generation.loop import GenerationLoop

    blobs = BlobStore(settings.blob_dir)
    registry = Registry(
        make_sessionmaker(make_db_engine(settings.resolved_database_url)), blobs, settings.upload_check
    )
    client = redis.Redis.from_url(
        settings.resolved_redis_url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30
    )
    config = GenConfig(
        max_running=settings.gen_max_running,
        flush_tokens=settings.gen_flush_tokens,
        flush_ms=settings.gen_flush_ms,
        cancel_poll_ms=settings.gen_cancel_poll_ms,
        claim_idle_ms=settings.claim_idle_ms,
        claim_interval_ms=settings.claim_interval_ms,
        max_deliveries=settings.max_deliveries,
        reply_ttl_s=settings.reply_ttl_s,
    )
    load = make_loader(
        GenLoadSettings(
            mode=settings.fence,
            threads=threads,
            memory_bytes=settings.model_memory_mb << 20,
            limits=settings.artifact_limits,
            options=EngineOptions(max_adapters=settings.gen_max_adapters),
        )
    )
    return GenerationLoop(client, RedisKeys(settings.redis_prefix), registry, blobs, load, config)
