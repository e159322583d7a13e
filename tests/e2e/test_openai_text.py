"""The OpenAI-compatible text routes through the official `openai` SDK, unmodified, against a
real gateway process on a free port; generation answered by the scripted responder
(tests/gen_responder.py) over the real Redis, so the gateway side is tested for real."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

import tests.conftest as base
from tests.e2e.conftest import AUTH, poll
from tests.e2e.harness import Stack, metric_sum
from tests.gen_responder import REPLY, Responder
from tests.text_models import add_causal_model


@dataclass
class World:
    stack: Stack
    responder: Responder
    key: str  # tenant acme, infer + manage
    pg_url: str

    def sdk(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.stack.url}/v1", api_key=key or self.key, max_retries=0)

    def new_key(self, tenant: str = "acme", scopes: tuple[str, ...] = ("infer",), **extra: Any) -> str:
        with httpx.Client(base_url=self.stack.url, headers=AUTH) as c:
            r = c.post("/v1/keys", json={"scopes": list(scopes), "tenant": tenant, **extra})
            assert r.status_code == 201, r.text
            return str(r.json()["key"])


@pytest.fixture
def world(stack: Stack, stack_env: dict[str, str], pg_url: str, redis_prefix: str) -> Iterator[World]:
    stack.start_gateway()
    with httpx.Client(base_url=stack.url, headers=AUTH) as c:
        for tenant in ("acme", "other"):
            assert c.post("/v1/tenants", json={"name": tenant}).status_code == 201
    (version_id,) = add_causal_model(pg_url, "acme", "chat")
    add_causal_model(pg_url, "acme", "encoder", fmt="hf-encoder")
    responder = Responder(base.REDIS_URL, redis_prefix, version_id).start()
    w = World(stack, responder, "", pg_url)
    w.key = w.new_key(scopes=("infer", "manage"))
    try:
        yield w
    finally:
        responder.stop()


def test_chat_and_completions_plain_and_streamed(world: World) -> None:
    sdk = world.sdk()
    raw = sdk.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "say hi"}]
    )
    assert raw.headers["x-request-id"]
    chat = raw.parse()
    assert chat.object == "chat.completion" and chat.model == "chat"
    assert chat.id == f"chatcmpl-{raw.headers['x-request-id']}"
    assert chat.choices[0].message.content == REPLY and chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (2, len(REPLY.split()))
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    parts = [{"type": "text", "text": "two"}, {"type": "text", "text": "parts"}]
    events = list(
        sdk.chat.completions.create(
            model="chat:1",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": parts}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(e.object == "chat.completion.chunk" for e in events)
    assert events[0].choices[0].delta.role == "assistant"
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == REPLY
    assert [e.choices[0].finish_reason for e in events if e.choices][-1] == "stop"
    assert events[-1].choices == [] and events[-1].usage is not None
    assert events[-1].usage.prompt_tokens == 4  # "be brief" + "two\nparts"

    cut = sdk.completions.create(model="chat", prompt="once upon", max_tokens=2, logprobs=1)
    assert cut.object == "text_completion" and cut.id.startswith("cmpl-")
    assert cut.choices[0].text == "hello from" and cut.choices[0].finish_reason == "length"
    assert cut.choices[0].logprobs is not None and cut.choices[0].logprobs.tokens == ["hello", " from"]
    streamed = list(sdk.completions.create(model="chat", prompt="x", stream=True, n=2, seed=7, stop=["\n"]))
    texts = {i: "".join(e.choices[0].text for e in streamed if e.choices[0].index == i) for i in (0, 1)}
    assert texts == {0: REPLY, 1: REPLY}
    sent = world.responder.requests[-1]
    assert (sent.params.n, sent.params.seed, sent.params.stop, sent.mode) == (2, 7, ["\n"], "completion")


def test_models_in_openai_shape(world: World) -> None:
    sdk = world.sdk()
    listed = world.sdk(world.new_key()).models.list()  # an infer key lists models too
    ids = {m.id for m in listed.data}
    assert {"chat", "encoder"} <= ids
    model = sdk.models.retrieve("chat")
    assert model.id == "chat" and model.object == "model" and model.created > 0 and model.owned_by
    with httpx.Client(base_url=world.stack.url, headers={"Authorization": f"Bearer {world.key}"}) as c:
        body = c.get("/v1/models/chat").json()
    assert body["versions"] == [1] and body["name"] == "chat"  # modelkiln's own fields stay
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("nope")


def test_errors_arrive_as_the_sdks_own_types(world: World) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        world.sdk("kiln_bad_key").chat.completions.create(model="chat", messages=msgs)  # type: ignore[arg-type]
    narrow = world.new_key(models=["encoder"])
    with pytest.raises(openai.PermissionDeniedError):
        world.sdk(narrow).chat.completions.create(model="chat", messages=msgs)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError) as nf:
        world.sdk().chat.completions.create(model="ghost", messages=msgs)  # type: ignore[arg-type]
    assert nf.value.code == "model_not_found"
    # another tenant's valid key, naming acme's private model: 404, as on the OIP routes
    with pytest.raises(openai.NotFoundError):
        world.sdk(world.new_key("other")).chat.completions.create(model="acme~chat", messages=msgs)  # type: ignore[arg-type]
    # shared with "other": then its key may call it by the owner's name
    with httpx.Client(base_url=world.stack.url, headers={"Authorization": f"Bearer {world.key}"}) as c:
        r = c.put("/v1/models/chat/sharing", json={"visibility": "private", "tenants": ["other"]})
        assert r.status_code == 200, r.text
    shared = world.sdk(world.new_key("other")).chat.completions.create(model="acme~chat", messages=msgs)  # type: ignore[arg-type]
    assert shared.model == "acme~chat" and shared.choices[0].message.content == REPLY
    with pytest.raises(openai.BadRequestError) as fmt:
        world.sdk().chat.completions.create(model="encoder", messages=msgs)  # type: ignore[arg-type]
    assert "hf-causal-lm" in fmt.value.message
    with pytest.raises(openai.BadRequestError) as early:  # an error before the first token
        world.sdk().chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "ERROR_FIRST"}]
        )
    assert early.value.status_code == 400
    stream = world.sdk().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "ERROR_MID"}], stream=True
    )
    got = []
    with pytest.raises(openai.APIError, match="boom"):  # mid-stream: an error event, not a cut
        for event in stream:
            got.append(event.choices[0].delta.content)
    assert got == ["hello", " from"]


def test_token_limits_refuse_with_retry_after_and_usage_adds_up(world: World) -> None:
    msgs = [{"role": "user", "content": "count my tokens"}]
    per_min = world.sdk(world.new_key(limits={"tokens_per_min": 6}))
    first = per_min.chat.completions.create(model="chat", messages=msgs)  # type: ignore[arg-type]
    assert first.usage is not None and first.usage.total_tokens > 6  # the bucket is now in debt
    with pytest.raises(openai.RateLimitError) as limited:
        per_min.chat.completions.create(model="chat", messages=msgs)  # type: ignore[arg-type]
    assert int(limited.value.response.headers["retry-after"]) >= 1
    monthly = world.sdk(world.new_key(limits={"monthly_tokens": 5}))
    second = monthly.completions.create(model="chat", prompt="a b c")
    with pytest.raises(openai.RateLimitError) as quota:
        monthly.completions.create(model="chat", prompt="a b c")
    assert quota.value.code == "insufficient_quota"
    # the usage report's tokens are the sum of what the responses said
    with httpx.Client(base_url=world.stack.url, headers={"Authorization": f"Bearer {world.key}"}) as c:
        rows = c.get("/v1/usage", params={"group_by": "model"}).json()["data"]
    (row,) = [r for r in rows if r["model"] == "chat"]
    assert second.usage is not None
    assert row["prompt_tokens"] == first.usage.prompt_tokens + second.usage.prompt_tokens
    assert row["completion_tokens"] == first.usage.completion_tokens + second.usage.completion_tokens


def test_a_client_that_goes_away_cancels_its_generation(world: World) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "SLOW"}], "stream": True}
    headers = {"Authorization": f"Bearer {world.key}"}
    with (
        httpx.Client(base_url=world.stack.url, headers=headers, timeout=30) as c,
        c.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        request_id = r.headers["x-request-id"]
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: ")).startswith("data: {")
    # the stream was closed mid-generation: the worker sees the cancel key and frees the sequence
    poll(lambda: request_id in world.responder.cancelled, what="the responder to see the cancel key")
    metrics = httpx.get(f"http://127.0.0.1:{world.stack.gateway_metrics_port}/metrics").text
    assert 'outcome="cancelled"' in metrics
    assert metric_sum(metrics, "kiln_generation_time_to_first_token_seconds_count") >= 1


def test_hostile_requests(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.key}"}
    with httpx.Client(base_url=world.stack.url, headers=headers, timeout=30) as c:

        def post(body: Any, path: str = "/v1/chat/completions") -> httpx.Response:
            return c.post(path, json=body)

        msgs = [{"role": "user", "content": "hi"}]
        for bad in (
            {"model": "chat", "messages": msgs, "temperature": 5},
            {"model": "chat", "messages": msgs, "n": 0},
            {"model": "chat", "messages": msgs, "max_tokens": -1},
            {"model": "chat", "messages": msgs, "stop": ["x"] * 5},
            {"model": "chat", "messages": [{"role": "robot", "content": "x"}]},
            {"model": "chat", "messages": []},
            {"model": "chat", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            {"model": "chat", "messages": [{"role": "user", "content": "x"}] * 600},
            {"model": "chat:", "messages": msgs},
            {"messages": msgs},
        ):
            r = post(bad)
            assert r.status_code == 400, (bad, r.text)
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            assert r.json()["error"]["type"] == "invalid_request_error"
        r = post({"model": "chat", "prompt": [1, 2, 3]}, "/v1/completions")
        assert r.status_code == 400 and "token arrays" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        huge = {"model": "chat", "messages": [{"role": "user", "content": "x" * (9 << 20)}]}
        r = post(huge)
        assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
        r = post({"model": "chat\r\nX-Evil: 1", "messages": msgs})
        assert r.status_code in (400, 404) and "x-evil" not in r.headers
        r = post({"model": "x" * 10_000, "messages": msgs})
        assert r.status_code == 400
    assert not world.responder.requests  # none of them reached the queue


def test_a_lora_adapter_is_served_on_its_base_and_stays_private(world: World) -> None:
    """An adapter version (lora-adapter, lineage adapter_of = chat's version) is called by its
    own name; the request goes to its base's stream with the adapter's id and digest. Its
    visibility is its own: another tenant gets the 404 of any private model."""
    base_id = world.responder.version_id  # the responder answers on chat's stream
    (lora_id,) = add_causal_model(
        world.pg_url,
        "acme",
        "chat-lora",
        fmt="lora-adapter",
        lineage={"adapter_of": base_id},
        sha256="ab" * 32,
    )
    (encoder_id,) = add_causal_model(world.pg_url, "acme", "encoder2", fmt="hf-encoder")
    add_causal_model(world.pg_url, "acme", "enc-lora", fmt="lora-adapter", lineage={"adapter_of": encoder_id})
    add_causal_model(world.pg_url, "acme", "orphan", fmt="lora-adapter", lineage={"adapter_of": 10**9})
    msgs = [{"role": "user", "content": "say hi"}]
    chat = world.sdk().chat.completions.create(model="chat-lora", messages=msgs)  # type: ignore[arg-type]
    assert chat.model == "chat-lora" and chat.choices[0].message.content == REPLY
    sent = world.responder.requests[-1]
    assert sent.adapter is not None and (sent.adapter.version_id, sent.adapter.sha256) == (lora_id, "ab" * 32)
    assert sent.model == "chat-lora" and sent.tenant_id == world.responder.requests[0].tenant_id
    streamed = list(world.sdk().completions.create(model="chat-lora:1", prompt="x", stream=True))
    assert "".join(e.choices[0].text for e in streamed if e.choices) == REPLY
    assert all(e.model == "chat-lora:1" for e in streamed)
    # the attack: another tenant's valid key names acme's private adapter, bare or as owner~name
    other = world.sdk(world.new_key("other"))
    for name in ("chat-lora", "acme~chat-lora", "acme~chat-lora:1"):
        with pytest.raises(openai.NotFoundError) as nf:
            other.chat.completions.create(model=name, messages=msgs)  # type: ignore[arg-type]
        assert nf.value.status_code == 404 and str(lora_id) not in nf.value.message
    with pytest.raises(openai.PermissionDeniedError):  # a key allowed only the base
        world.sdk(world.new_key(models=["chat"])).chat.completions.create(model="chat-lora", messages=msgs)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as enc:  # an adapter of an encoder generates no text
        world.sdk().chat.completions.create(model="enc-lora", messages=msgs)  # type: ignore[arg-type]
    assert "hf-encoder" in enc.value.message
    with pytest.raises(openai.NotFoundError) as gone:  # its base no longer exists: not a 500
        world.sdk().chat.completions.create(model="orphan", messages=msgs)  # type: ignore[arg-type]
    assert "base model" in gone.value.message
    assert len([r for r in world.responder.requests if r.adapter is not None]) == 2
