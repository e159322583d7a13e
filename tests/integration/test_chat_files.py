"""Chat fine-tuning files over HTTP (issue 13 item 2, the data side): a chat file uploads with its
stats, a broken one is refused with line numbers, and models that do not take chat rows say so."""

from __future__ import annotations

import json

import httpx

from tests.integration.ft_helpers import job_body, setup_classifier, upload
from workers.contract.datasets import CHAT_NEEDS_CAUSAL


def _jsonl(*rows: object) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


CHAT = _jsonl(
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris", "weight": 1},
        ]
    },
)


async def test_a_chat_file_uploads_with_its_stats_and_a_broken_one_names_its_lines(
    client: httpx.AsyncClient,
) -> None:
    r = await upload(client, CHAT, "chat.jsonl")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["purpose"] == "fine-tune" and body["format"] == "jsonl"
    assert body["stats"] == {
        "kind": "chat",
        "rows": 2,
        "messages": 5,
        "assistant_messages": 2,
        "estimated_tokens": 2 + 8,  # ceil(8 / 4) + ceil(32 / 4)
        "max_row_estimated_tokens": 8,
    }
    assert (await client.get(f"/v1/files/{body['id']}")).json()["stats"] == body["stats"]

    broken = CHAT + _jsonl(
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]},
        {"prompt": "a", "completion": "b"},
    )
    r = await upload(client, broken, "broken.jsonl")
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_dataset"
    assert "line 3: messages[0].role" in err["message"] and "line 4: messages[1].content" in err["message"]
    got = [(e["line"], e["field"]) for e in err["report"]["errors"]]
    assert got == [(3, "messages[0].role"), (4, "messages[1].content"), (5, "prompt")]
    assert err["report"]["stats"]["rows"] == 2


async def test_a_chat_file_is_refused_for_models_that_are_not_causal_lms(client: httpx.AsyncClient) -> None:
    train, valid = await setup_classifier(client)
    chat = (await upload(client, CHAT, "chat.jsonl")).json()["id"]
    for body in (job_body(chat, valid), job_body(train, chat)):
        r = await client.post("/v1/fine_tuning/jobs", json=body)
        assert r.status_code == 422 and CHAT_NEEDS_CAUSAL in r.json()["error"]["message"], r.text
    r = await client.post(
        "/v1/compression/jobs", json={"model": "clf", "method": "quantize", "validation_file": chat}
    )
    assert r.status_code == 422 and CHAT_NEEDS_CAUSAL in r.text, r.text
    assert (await client.get("/v1/fine_tuning/jobs")).json()["data"] == []


async def test_a_causal_lm_dry_run_counts_tokens_and_times_a_step(client: httpx.AsyncClient) -> None:
    """LoRA on an hf-causal-lm base (a tiny random Llama): the dry run tokenises the file with the
    model's chat template, counts the adapter's parameters and times one step; a row longer than
    the context is refused with its line; a non-chat file is refused."""
    from tests.causal_tiny import tiny_bundle
    from tests.integration.helpers import register

    r = await register(client, "tiny-lm", tiny_bundle(context=64), "hf-causal-lm")
    assert r.status_code == 201, r.text
    rows = [
        {"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": "A."}]}
        for i in range(10)
    ]
    chat = await upload(client, _jsonl(*rows), "chat.jsonl")
    body = {"model": "tiny-lm", "training_file": chat.json()["id"], "hyperparameters": {"lora": {}}}
    r = await client.post("/v1/fine_tuning/jobs?dry_run=true", json=body)
    assert r.status_code == 200, r.text
    est = r.json()["estimate"]
    assert 0 < est["trainable_parameters"] < 0.2 * est["total_parameters"]
    assert est["tokens"] > est["loss_tokens"] > 0 and est["step_ms"] >= 0
    assert est["trained_tokens"] > 0 and est["estimated_seconds"] >= 0

    long = [
        *rows,
        {"messages": [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "A."}]},
    ]
    too_long = await upload(client, _jsonl(*long), "long.jsonl")
    r = await client.post(
        "/v1/fine_tuning/jobs?dry_run=true", json={**body, "training_file": too_long.json()["id"]}
    )
    assert r.status_code == 422 and "line 11" in r.text and "context" in r.text, r.text

    r = await client.post("/v1/fine_tuning/jobs", json={**body, "task": "classification"})
    assert r.status_code == 422 and "causal-lm" in r.text, r.text
    r = await client.post("/v1/fine_tuning/jobs", json=body)  # no dry run: queued with LoRA
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    assert r.json()["hyperparameters"]["lora"]["rank"] == 8


async def test_a_lora_job_on_a_causal_lm_makes_adapter_versions(client: httpx.AsyncClient, settings) -> None:
    """A real trainer runs LoRA on a tiny random Llama: the result and a promoted checkpoint are
    lora-adapter versions whose lineage names the base they attach to; the results file has a
    per-row loss for the result and the parent; the checkpoint holds the adapter only."""
    from tests.causal_tiny import tiny_bundle
    from tests.integration.ft_helpers import TrainerThread, wait_for
    from tests.integration.helpers import register

    assert (await register(client, "tiny-lm", tiny_bundle(), "hf-causal-lm")).status_code == 201
    rows = [
        {"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": "A."}]}
        for i in range(12)
    ]
    chat = (await upload(client, _jsonl(*rows), "chat.jsonl")).json()["id"]
    body = {
        "model": "tiny-lm",
        "training_file": chat,
        "suffix": "qa",
        "keep_checkpoints": 2,
        "hyperparameters": {"epochs": 2, "batch_size": 4, "learning_rate": 0.01, "lora": {"rank": 4}},
    }
    trainer = TrainerThread(settings, lease_s=30).start()
    try:
        job = await wait_for(
            client, (await client.post("/v1/fine_tuning/jobs", json=body)).json()["id"], timeout=300
        )
    finally:
        trainer.stop()
    assert job["status"] == "succeeded", job
    assert job["fine_tuned_model"] == "tiny-lm-qa:1" and job["trained_tokens"] > 0
    metrics = job["result"]["metrics"]
    assert set(metrics) >= {"valid_loss", "perplexity"}
    base = (await client.get("/v1/models/tiny-lm/versions/1")).json()
    version = (await client.get("/v1/models/tiny-lm-qa/versions/1")).json()
    assert version["format"] == "lora-adapter" and isinstance(version["lineage"]["adapter_of"], int)
    assert version["lineage"]["parent"]["sha256"] == base["sha256"]
    results = (await client.get(f"/v1/files/{job['result']['result_files'][0]}/content")).text
    assert results.splitlines()[0].startswith("line,label,predicted,parent_predicted")

    ckpts = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")).json()["data"]
    r = await client.post(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/{ckpts[0]['id']}/promote")
    assert r.status_code == 201, r.text
    promoted = r.json()
    assert promoted["format"] == "lora-adapter"
    assert promoted["lineage"]["adapter_of"] == version["lineage"]["adapter_of"]
