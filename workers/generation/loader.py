"""Which backend loader `kiln worker` gives its generation loop (workers/generation/backends.py
BackendLoader: a resolved hf-causal-lm version and its artifact path -> a GenerationBackend):
the engine in a fenced child (fenced.load_backend) with the worker's settings, unless a test has
put its own in OVERRIDE (tests/e2e/gen_worker.py does, in its worker process)."""

from __future__ import annotations

import functools

from workers.generation.backends import BackendLoader
from workers.generation.fenced import GenLoadSettings, load_backend

OVERRIDE: BackendLoader | None = None


def make_loader(settings: GenLoadSettings) -> BackendLoader:
    if OVERRIDE is not None:
        return OVERRIDE
    if settings.mode != "off":
        from model_store import fence

        # into the fork server's preload when it has not started yet (else each child imports them)
        fence.preload(
            "workers.common.fork_server_init", "workers.generation.host", "workers.common.causal_model"
        )
    return functools.partial(load_backend, settings=settings)
