"""Which backend loader `kiln worker` gives its generation loop (workers/generation/backends.py
BackendLoader: a resolved hf-causal-lm version and its artifact path -> a GenerationBackend).
The engine's factory plugs in here, in one line; tests replace LOADER in their worker process."""

from __future__ import annotations

from pathlib import Path

from model_store.registry import ResolvedVersion
from workers.contract.errors import LoadError
from workers.generation.backend import GenerationBackend
from workers.generation.backends import BackendLoader


def no_engine(version: ResolvedVersion, path: Path) -> GenerationBackend:
    raise LoadError("text generation is not available on this worker (no generation engine installed)")


LOADER: BackendLoader = no_engine
