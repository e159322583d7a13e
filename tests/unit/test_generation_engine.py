"""The in-process generation engine on tiny random Llama and GPT-2 models (CPU, fp32, seeded):
stop sequences, length limits, cancel, the context length, n > 1, and 32 concurrent greedy
streams that each equal the same prompt run alone."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model_store.limits import ArtifactLimits
from tests.causal_tiny import tiny_bundle
from tests.generation_helpers import MAX_POLLS, Result, chat, completion, drain
from workers.common.causal_model import load_model
from workers.contract.generation import GenErrorCode
from workers.generation.backend import GenInputError
from workers.generation.engine import Engine, EngineOptions

CONTEXT = 256


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    torch.set_num_threads(1)
    data = tiny_bundle(request.param, seed=1, context=CONTEXT)
    path = tmp_path_factory.mktemp("gen") / "bundle.tar"
    path.write_bytes(data)
    loaded = load_model(path, hashlib.sha256(data).hexdigest(), "cpu", ArtifactLimits())
    eng = Engine(loaded, EngineOptions(seed=0))
    yield eng
    eng.close()


def _clean_stop(text: str) -> str:
    """Two characters of the text, away from its start, without a replacement character."""
    for k in range(3, len(text) - 2):
        if "\ufffd" not in text[k : k + 2]:
            return text[k : k + 2]
    pytest.skip("the greedy text has no plain two characters to stop on")


def test_greedy_is_deterministic_and_max_tokens_ends_with_length(engine: Engine) -> None:
    a, b = drain(
        engine, [chat("hello", temperature=0.0, max_tokens=12), chat("hello", temperature=0.0, max_tokens=12)]
    )
    assert a.text == b.text
    assert a.finish == {0: "length"}
    assert a.usage is not None and a.usage.completion_tokens == 12 == a.tokens[0]
    assert a.usage.prompt_tokens > 0
    assert a.events[0].first_token and not any(e.first_token for e in a.events[1:])


def test_a_stop_sequence_ends_the_text_before_it(engine: Engine) -> None:
    (full,) = drain(engine, [completion("once upon", temperature=0.0, max_tokens=24)])
    stop = _clean_stop(full.text)
    (cut,) = drain(
        engine, [completion("once upon", temperature=0.0, max_tokens=24, stop=[stop, "never-seen"])]
    )
    assert cut.finish == {0: "stop"}
    assert cut.text == full.text[: full.text.index(stop)]
    assert stop not in cut.text
    assert cut.usage is not None and cut.usage.completion_tokens <= 24


def test_cancel_ends_the_request_and_frees_its_sequence(engine: Engine) -> None:
    req = chat("a long one", temperature=0.0, max_tokens=200)
    engine.submit(req)
    res = Result()
    for _ in range(MAX_POLLS):
        for e in engine.poll(0.5):
            res.add(e)
        if res.events:
            break
    assert engine.stats().running + engine.stats().waiting == 1
    engine.cancel(req.request_id)
    for _ in range(MAX_POLLS):
        for e in engine.poll(0.05):
            res.add(e)
        if res.done and engine.stats().running == 0:
            break
    assert res.finish == {0: "cancelled"} and res.done
    assert res.usage is not None and res.usage.completion_tokens < 200
    assert engine.stats().running == 0 and not engine.busy


def test_over_the_context_length_is_refused_like_openai(engine: Engine) -> None:
    with pytest.raises(GenInputError, match="maximum context length is 256 tokens") as info:
        engine.submit(chat("hi", max_tokens=CONTEXT))
    assert info.value.code == GenErrorCode.CONTEXT_LENGTH
    with pytest.raises(GenInputError) as info:
        engine.submit(completion("x" * (CONTEXT + 10)))  # no max_tokens: the prompt alone is too long
    assert info.value.code == GenErrorCode.CONTEXT_LENGTH
    assert not engine.busy


def test_no_max_tokens_runs_up_to_the_context(engine: Engine) -> None:
    prompt = "y" * (CONTEXT - 20)
    (res,) = drain(engine, [completion(prompt, temperature=0.0)])
    assert res.usage is not None and res.usage.prompt_tokens + res.usage.completion_tokens <= CONTEXT
    assert res.finish[0] in ("length", "stop")


def test_n_choices_each_finish_and_usage_sums_them(engine: Engine) -> None:
    (res,) = drain(engine, [chat("two please", temperature=1.0, max_tokens=8, n=2)])
    assert set(res.finish) == {0, 1} and set(res.finish.values()) <= {"length", "stop"}
    assert res.usage is not None and res.usage.completion_tokens == res.tokens[0] + res.tokens[1]
    assert res.events[-1].done and sum(e.done for e in res.events) == 1


def test_sampling_parameters_are_taken_per_request(engine: Engine) -> None:
    results = drain(
        engine,
        [
            chat("s", temperature=1.5, top_p=0.5, top_k=5, max_tokens=6),
            chat("s", temperature=0.0, max_tokens=6),
            chat("s", temperature=0.7, seed=3, max_tokens=6),
        ],
    )
    assert all(r.finish[0] in ("length", "stop") for r in results)


def test_logprobs_and_bad_params_are_refused(engine: Engine) -> None:
    with pytest.raises(GenInputError, match="logprobs"):
        engine.submit(chat("x", logprobs=2))
    req = chat("x")
    req.params.n = 100
    with pytest.raises(GenInputError, match="n must be"):
        engine.submit(req)


def test_32_concurrent_greedy_streams_each_equal_the_prompt_run_alone(engine: Engine) -> None:
    prompts = [f"prompt number {i} " + "abc"[: i % 4] * (i % 5) for i in range(32)]
    alone = [drain(engine, [completion(p, temperature=0.0, max_tokens=10)])[0].text for p in prompts]
    together = drain(engine, [completion(p, temperature=0.0, max_tokens=10) for p in prompts])
    assert [r.text for r in together] == alone
    assert all(r.finish == {0: "length"} for r in together)


def test_a_dead_generation_loop_fails_requests_instead_of_dropping_them(tmp_path: Path) -> None:
    data = tiny_bundle("gpt2", seed=3)
    path = tmp_path / "bundle.tar"
    path.write_bytes(data)
    eng = Engine(load_model(path, hashlib.sha256(data).hexdigest(), "cpu", ArtifactLimits()))
    try:
        eng._mgr.stop(block=True)  # the loop thread ends as it would on a fatal error
        assert eng.broken
        (res,) = drain(eng, [chat("x", max_tokens=4)])
        assert res.finish == {0: "error"} and res.events[-1].code == GenErrorCode.MODEL_ERROR
    finally:
        eng.close()
