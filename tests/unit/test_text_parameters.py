"""What the text routes' bodies accept (service/text/schemas.py): every parameter OpenAI defines
that this platform does not honour is refused with a 400 naming it, unless its value changes
nothing; a field OpenAI does not define is refused naming it; what the `openai` SDK sends on its
own is accepted."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from openai import OpenAI

from service.errors import InvalidInput
from service.text.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, parse

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION: dict[str, Any] = {"model": "m", "prompt": "hi"}
EMBEDDING: dict[str, Any] = {"model": "m", "input": "hi"}
KINDS = {"chat": (ChatRequest, CHAT), "completion": (CompletionRequest, COMPLETION)}


def _parse(kind: type[Any], body: dict[str, Any]) -> Any:
    req = parse(kind, json.dumps(body).encode())
    if isinstance(req, EmbeddingRequest):
        req.texts()
    else:
        req.gen_params()
    return req


def _refused(kind: type[Any], body: dict[str, Any]) -> InvalidInput:
    with pytest.raises(InvalidInput) as refused:
        _parse(kind, body)
    assert refused.value.status == 400
    return refused.value


# (parameter, values that change nothing, values that would change the answer)
UNHONOURED_ON_BOTH = [
    ("presence_penalty", [0, 0.0], [0.5, -1, 2]),
    ("frequency_penalty", [0, 0.0], [1.5, -0.1]),
    ("logit_bias", [{}], [{"50256": -100}, {"1": 5}]),
]
UNHONOURED_ON_CHAT = [
    ("tools", [[]], [[{"type": "function", "function": {"name": "f", "parameters": {}}}]]),
    ("tool_choice", ["none"], ["auto", "required", {"type": "function", "function": {"name": "f"}}]),
    ("response_format", [{"type": "text"}], [{"type": "json_object"}, {"type": "json_schema"}]),
    ("functions", [[]], [[{"name": "f"}]]),
    ("function_call", ["none"], ["auto"]),
    ("parallel_tool_calls", [True], [False]),
    ("store", [False], [True, 0]),
    ("metadata", [{}], [{"a": "b"}]),
    ("service_tier", ["auto", "default"], ["flex", "priority"]),
    ("modalities", [["text"]], [["text", "audio"]]),
    ("audio", [], [{"voice": "alloy", "format": "wav"}]),
    ("prediction", [], [{"type": "content", "content": "x"}]),
    ("reasoning_effort", [], ["low"]),
    ("verbosity", [], ["low"]),
    ("web_search_options", [], [{}]),
]
UNHONOURED_ON_COMPLETIONS = [("best_of", [1], [2, 3])]
CASES = [
    *((kind, *case) for kind in KINDS for case in UNHONOURED_ON_BOTH),
    *(("chat", *case) for case in UNHONOURED_ON_CHAT),
    *(("completion", *case) for case in UNHONOURED_ON_COMPLETIONS),
]


@pytest.mark.parametrize(("kind", "name", "noops", "refused"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_unhonoured_parameters_are_refused_unless_they_change_nothing(
    kind: str, name: str, noops: list[Any], refused: list[Any]
) -> None:
    model, base = KINDS[kind]
    for value in [None, *noops]:  # null and the default are what a client spelling defaults sends
        _parse(model, {**base, name: value})
    for value in refused:
        exc = _refused(model, {**base, name: value})
        assert exc.param == name and exc.message.startswith(f"{name} is not supported"), exc.message


def test_a_refusal_says_what_is_accepted() -> None:
    exc = _refused(ChatRequest, {**CHAT, "response_format": {"type": "json_object"}})
    want = (
        'response_format is not supported (accepted only as null or {"type": "text"}, which changes nothing)'
    )
    assert exc.message == want
    assert _refused(ChatRequest, {**CHAT, "store": 0}).param == "store"  # false, not a number


@pytest.mark.parametrize(
    ("kind", "name", "value"),
    [
        ("completion", "echo", True),
        ("completion", "suffix", "tail"),
        ("chat", "top_logprobs", 2),  # without logprobs: true
    ],
)
def test_the_refusals_that_were_there_name_their_parameter(kind: str, name: str, value: Any) -> None:
    model, base = KINDS[kind]
    assert _refused(model, {**base, name: value}).param == name


@pytest.mark.parametrize(
    ("model", "base", "name"),
    [
        (ChatRequest, CHAT, "unknown_field"),
        (ChatRequest, CHAT, "best_of"),  # a completions parameter: not one of chat's
        (ChatRequest, CHAT, "echo"),
        (CompletionRequest, COMPLETION, "messages"),
        (CompletionRequest, COMPLETION, "tools"),  # a chat parameter: not one of completions'
        (EmbeddingRequest, EMBEDDING, "unknown_field"),
        (EmbeddingRequest, EMBEDDING, "temperature"),
    ],
)
def test_unknown_fields_are_refused_by_name(model: type[Any], base: dict[str, Any], name: str) -> None:
    exc = _refused(model, {**base, name: {"x": 1}})
    assert exc.param == name and exc.message == f"unrecognized request argument supplied: {name}"


def test_out_of_range_values_name_their_field() -> None:
    assert _refused(ChatRequest, {**CHAT, "temperature": 2.5}).param == "temperature"
    assert _refused(ChatRequest, {**CHAT, "n": 9}).param == "n"
    assert _refused(CompletionRequest, {**COMPLETION, "prompt": [1, 2]}).param == "prompt"
    assert _refused(EmbeddingRequest, {**EMBEDDING, "input": []}).param == "input"


def test_honoured_parameters_keep_working() -> None:
    chat = _parse(
        ChatRequest,
        {
            **CHAT,
            "max_completion_tokens": 9,
            "temperature": 0,
            "top_p": 0.5,
            "top_k": 4,
            "seed": 3,
            "stop": ["x"],
            "n": 2,
            "logprobs": True,
            "top_logprobs": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u1",
        },
    )
    params = chat.gen_params()
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (9, 0.0, 0.5, 4)
    assert (params.seed, params.stop, params.n, params.logprobs) == (3, ["x"], 2, 2)
    assert chat.include_usage
    completion = _parse(CompletionRequest, {**COMPLETION, "logprobs": 2, "max_tokens": 3, "echo": False})
    assert completion.gen_params().logprobs == 2
    embedding = _parse(EmbeddingRequest, {**EMBEDDING, "encoding_format": "base64", "dimensions": 8})
    assert embedding.dimensions == 8 and embedding.encoding_format == "base64"


def test_what_the_openai_sdk_sends_by_default_is_accepted() -> None:
    """The exact bodies of the SDK's plain calls (captured from its own transport)."""
    sent: list[tuple[str, bytes]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append((request.url.path, request.content))
        return httpx2.Response(400, json={"error": {"message": "stop here", "type": "x"}})

    transport = httpx2.MockTransport(handler)
    with httpx2.Client(transport=transport) as http:
        client = OpenAI(base_url="http://kiln/v1", api_key="k", max_retries=0, http_client=http)
        calls = (
            lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}]),
            lambda: client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "x"}],
                stream=True,
                stream_options={"include_usage": True},
            ),
            lambda: client.completions.create(model="m", prompt="x"),
            lambda: client.completions.create(model="m", prompt="x", stream=True),
            lambda: client.embeddings.create(model="m", input="x"),
            lambda: client.embeddings.create(model="m", input=["x", "y"]),
        )
        for call in calls:
            with pytest.raises(Exception, match="stop here"):
                call()
    kinds = {"/v1/chat/completions": ChatRequest, "/v1/completions": CompletionRequest}
    assert len(sent) == len(calls)
    for path, content in sent:
        _parse(kinds.get(path, EmbeddingRequest), json.loads(content))
