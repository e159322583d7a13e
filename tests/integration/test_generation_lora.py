"""LoRA adapters served on a generation engine's base model (workers/generation/adapters.py), on a
tiny random Llama (CPU, fp32, greedy): requests of two adapters and of the base in one continuous
batch each give what they give alone, on one copy of the base; least-recently-used eviction;
an adapter that does not fit, bytes that do not match their digest, or no free slot fail that
request alone. Then once through the fence (the adapter's bytes over the channel)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from model_store.fence import fence_available
from model_store.hf_causal_lm import causal_lm_signature
from model_store.limits import ArtifactLimits
from model_store.registry import ResolvedVersion
from model_store.signature import VersionConfig
from tests.causal_tiny import tiny_bundle
from tests.generation_helpers import Result, completion, drain
from tests.lora_tiny import adapter_bytes, mismatched_bytes
from workers.common.causal_model import load_model
from workers.common.lora import LoraLinear
from workers.contract.generation import AdapterRef, GenErrorCode, GenRequestMsg
from workers.generation.backend import GenInputError, NeedAdapter
from workers.generation.engine import Engine, EngineOptions
from workers.generation.fenced import FencedGenerationBackend, FenceMode, GenLoadSettings, load_backend

pytest.importorskip("peft")
PROMPT = "the kiln said"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lora-gen") / "blob"
    path.write_bytes(tiny_bundle("llama", seed=3))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def blobs(tiny_path: Path) -> dict[int, bytes]:
    """Adapters 11, 12, 13 (random, distinct) and 99 (does not fit), made on their own copy of
    the base (the engine's copy carries its hooks)."""
    model = load_model(tiny_path, _sha(tiny_path), "cpu", ArtifactLimits()).model
    out = {vid: adapter_bytes(model, seed=vid) for vid in (11, 12, 13)}
    out[99] = mismatched_bytes(model, seed=99)
    return out


class Source:
    """An AdapterBytes over `blobs` that counts its reads."""

    def __init__(self, blobs: dict[int, bytes]) -> None:
        self.blobs: dict[int, bytes] = blobs
        self.reads: list[int] = []

    def __call__(self, ref: AdapterRef) -> bytes:
        self.reads.append(ref.version_id)
        return self.blobs[ref.version_id]

    def ref(self, vid: int) -> AdapterRef:
        return AdapterRef(vid, hashlib.sha256(self.blobs[vid]).hexdigest())


def _engine(path: Path, max_adapters: int) -> Engine:
    torch.set_num_threads(1)
    loaded = load_model(path, _sha(path), "cpu", ArtifactLimits())
    return Engine(loaded, EngineOptions(seed=0, max_adapters=max_adapters))


@pytest.fixture
def engine(tiny_path: Path) -> Iterator[Engine]:
    eng = _engine(tiny_path, 4)
    yield eng
    eng.close()


def _req(source: Source, vid: int | None, prompt: str = PROMPT, max_tokens: int = 10) -> GenRequestMsg:
    req = completion(prompt, temperature=0.0, max_tokens=max_tokens)
    req.adapter = None if vid is None else source.ref(vid)
    return req


def _run(backend: object, source: Source, reqs: list[GenRequestMsg]) -> list[Result]:
    """drain() with the adapters' bytes at hand."""

    class WithBytes:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def submit(self, req: GenRequestMsg) -> None:
            self.inner.submit(req, source if req.adapter is not None else None)  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> Callable[..., object]:
            found: Callable[..., object] = getattr(self.inner, name)
            return found

    return drain(WithBytes(backend), reqs)  # type: ignore[arg-type]


def test_mixed_batch_equals_each_alone_on_one_copy_of_the_base(
    engine: Engine, blobs: dict[int, bytes]
) -> None:
    source = Source(blobs)
    q = engine._m.model.model.layers[0].self_attn.q_proj
    weight_ptr, params = (
        q.weight.data_ptr(),
        sum(p.numel() * p.element_size() for p in engine._m.model.parameters()),
    )
    plan = [None, 11, 12, None, 11, 12]
    prompts = [PROMPT, PROMPT, PROMPT, "another one", "another one", "another one"]
    alone = [_run(engine, source, [_req(source, v, p)])[0].text for v, p in zip(plan, prompts, strict=True)]
    assert alone[1] != alone[0] and alone[2] != alone[0] and alone[1] != alone[2]  # the adapters do something
    assert source.reads == [11, 12]  # loaded once each
    mixed_before = engine.adapters.mixed if engine.adapters else 0
    together = _run(engine, source, [_req(source, v, p) for v, p in zip(plan, prompts, strict=True)])
    assert [r.text for r in together] == alone
    assert all(r.finish == {0: "length"} and r.usage is not None for r in together)
    assert engine.adapters is not None and engine.adapters.mixed > mixed_before  # one batch, many adapters
    wrapped = engine._m.model.model.layers[0].self_attn.q_proj
    assert isinstance(wrapped, LoraLinear) and wrapped.base.weight.data_ptr() == weight_ptr  # type: ignore[operator]
    assert sum(p.numel() * p.element_size() for p in engine._m.model.parameters()) == params  # no copy
    assert engine.adapters.set.nbytes < params / 10  # two rank-4 adapters of q and v
    assert not engine.adapters.set.pins  # every request unpinned its adapter at its end
    stats = engine.stats().extra
    assert stats == {"adapters": 2, "adapter_loads": 2, "adapter_evictions": 0}


def test_least_recently_used_adapter_is_evicted_and_reloaded(
    tiny_path: Path, blobs: dict[int, bytes]
) -> None:
    eng = _engine(tiny_path, 2)
    try:
        source = Source(blobs)
        first = {v: _run(eng, source, [_req(source, v)])[0].text for v in (11, 12)}
        _run(eng, source, [_req(source, 11)])  # 11 used last: 12 goes for 13
        third = _run(eng, source, [_req(source, 13)])[0].text
        assert sorted(eng.adapters.set.loaded) == [11, 13] and eng.adapters.evictions == 1  # type: ignore[union-attr]
        again = _run(eng, source, [_req(source, 12)])[0].text
        assert again == first[12] and third not in first.values()
        assert source.reads == [11, 12, 13, 12]
        assert sorted(eng.adapters.set.loaded) == [12, 13]  # type: ignore[union-attr]
        with pytest.raises(NeedAdapter):  # evicted, and no bytes given: the fence's worker resends
            eng.submit(_req(source, 11))
    finally:
        eng.close()


def test_a_bad_adapter_fails_its_request_alone(engine: Engine, blobs: dict[int, bytes]) -> None:
    source = Source(blobs)
    want = [_run(engine, source, [_req(source, v)])[0].text for v in (None, 11)]
    running = [_req(source, None, max_tokens=10), _req(source, 11, max_tokens=10)]
    for r in running:
        engine.submit(r, source)
    with pytest.raises(GenInputError) as mismatch:
        engine.submit(_req(source, 99), source)
    assert mismatch.value.code == GenErrorCode.INVALID_INPUT and "does not fit" in str(mismatch.value)
    lying = _req(source, 12)
    lying.adapter = AdapterRef(12, "0" * 64)  # bytes that are not the ones the digest names
    with pytest.raises(GenInputError) as digest:
        engine.submit(lying, source)
    assert digest.value.code == GenErrorCode.LOAD_FAILED
    results = {r.request_id: Result() for r in running}
    while not all(res.done for res in results.values()):
        for e in engine.poll(0.5):
            results[e.request_id].add(e)
    assert [results[r.request_id].text for r in running] == want
    assert 99 not in engine.adapters.set.loaded  # type: ignore[union-attr]
    plain = engine._m.model.model.layers[0].self_attn.q_proj
    assert all(99 not in m.adapters for m in engine._m.model.modules() if isinstance(m, LoraLinear)), plain


def test_no_free_slot_is_unavailable_and_cancel_frees_it(tiny_path: Path, blobs: dict[int, bytes]) -> None:
    eng = _engine(tiny_path, 1)
    try:
        source = Source(blobs)
        long = _req(source, 11, max_tokens=200)
        eng.submit(long, source)
        with pytest.raises(GenInputError) as full:
            eng.submit(_req(source, 12), source)
        assert full.value.code == GenErrorCode.UNAVAILABLE
        eng.cancel(long.request_id)
        assert eng.adapters is not None and not eng.adapters.set.pins
        ended = [e for e in eng.poll(0.0) if e.request_id == long.request_id and e.done]
        assert [e.finish for e in ended] == ["cancelled"]
        (ok,) = _run(eng, source, [_req(source, 12)])
        assert ok.finish == {0: "length"}
    finally:
        eng.close()


def test_adapter_bytes_go_over_the_fence_once(
    tiny_path: Path, blobs: dict[int, bytes], engine: Engine
) -> None:
    source = Source(blobs)
    want = [_run(engine, source, [_req(source, v)])[0].text for v in (None, 11, 12)]
    version = ResolvedVersion(
        1, 1, "gen", 1, "hf-causal-lm", _sha(tiny_path), causal_lm_signature(), VersionConfig(device="cpu")
    )
    mode: FenceMode = "required" if fence_available() else "auto"
    settings = GenLoadSettings(mode=mode, threads=1, options=EngineOptions(seed=0, max_adapters=1))
    backend = load_backend(version, tiny_path, settings)
    assert isinstance(backend, FencedGenerationBackend)
    try:
        fenced = Source(blobs)
        got = [_run(backend, fenced, [_req(fenced, v)])[0].text for v in (None, 11, 11, 12, 11)]
        assert got == [want[0], want[1], want[1], want[2], want[1]]
        # 11 sent once, kept; 12 evicts it (capacity 1): the child asks for 11 again
        assert fenced.reads == [11, 12, 11]
        stats = backend.stats().extra
        assert stats.get("adapter_evictions") == 2 and stats.get("adapters") == 1
    finally:
        backend.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_adapters_share_one_continuous_batch_on_cuda(tiny_path: Path, blobs: dict[int, bytes]) -> None:
    """The GPU check's LoRA path: two adapters and the base in one continuous batch on CUDA (bf16),
    the adapters' weights on the device, each request's greedy text as when it runs alone."""
    loaded = load_model(tiny_path, _sha(tiny_path), "cuda", ArtifactLimits())
    eng = Engine(loaded, EngineOptions(seed=0, max_adapters=4))
    try:
        source = Source(blobs)
        plan = [None, 11, 12] * 3
        alone = [_run(eng, source, [_req(source, v)])[0].text for v in plan[:3]]
        assert alone[1] != alone[0] and alone[2] != alone[0]
        together = _run(eng, source, [_req(source, v) for v in plan])
        print(f"\nLoRA on CUDA: base {alone[0]!r}, adapters {alone[1]!r} {alone[2]!r}")
        assert [r.text for r in together] == alone * 3
        assert eng.adapters is not None and eng.adapters.mixed > 0
        layer = eng._m.model.model.layers[0].self_attn.q_proj
        assert isinstance(layer, LoraLinear) and all(a.is_cuda for a, _b, _s in layer.adapters.values())
    finally:
        eng.close()
