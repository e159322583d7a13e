"""`kiln trainer`: build and run a fine-tune trainer. The only CLI module that imports
workers.finetune (lazily, so `kiln --help` and the client commands never load torch)."""

from __future__ import annotations

from service.settings import Settings


def run_trainer(threads: int, metrics_port: int, metrics_host: str) -> int:
    from dataclasses import replace

    import redis
    import torch

    from model_store.blobs import BlobStore
    from model_store.db import make_db_engine, make_sessionmaker
    from model_store.jobs import JobStore
    from model_store.registry import Registry
    from workers.contract.finetune_check import FenceLimits
    from workers.contract.redis_keys import RedisKeys
    from workers.finetune.metrics import TrainerMetrics
    from workers.finetune.trainer import Trainer, TrainerConfig

    settings = Settings()
    if threads:
        torch.set_num_threads(threads)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host)
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
            limits=replace(FenceLimits.from_settings(settings), threads=threads),
        ),
        TrainerMetrics(),
    )
    trainer.install_signal_handlers()
    trainer.run()
    return 0
