"""Units of the OpenAI-compatible text routes: chunk ordering per request, request parsing,
model names, error shapes, token limits in key power."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from service.errors import InvalidInput
from service.openai_errors import error_json, is_openai, status_of
from service.tenancy.access import KeyPower, excess
from service.tenancy.limits import Limits
from service.text import shapes
from service.text.generation import split_model
from service.text.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, parse
from workers.contract.errors import EngineUnavailable, ReplyTimeout
from workers.contract.gen_client import GenReplies
from workers.contract.generation import GenChunkMsg


async def _read(replies: GenReplies, rid: str, deadline: float) -> list[GenChunkMsg]:
    return [c async for c in replies.chunks(rid, deadline)]


async def test_chunks_come_in_seq_order_without_duplicates_until_done() -> None:
    replies = GenReplies()
    replies.open("r")
    for seq in (1, 0, 0, 3, 2):  # out of order, one twice
        replies.deliver(GenChunkMsg("r", seq, text=str(seq), done=seq == 3).to_fields())
    replies.deliver(GenChunkMsg("someone-else", 0).to_fields())  # nobody waits: dropped
    replies.deliver({b"v": b"1", b"k": b"gen", b"h": b"{not json"})  # malformed: dropped
    got = await _read(replies, "r", time.monotonic() + 30)
    assert [c.text for c in got] == ["0", "1", "2", "3"]


async def test_a_lost_connection_and_a_passed_deadline_end_the_reader() -> None:
    replies = GenReplies()
    replies.open("a")
    replies.fail_all("gone")
    with pytest.raises(EngineUnavailable):
        await _read(replies, "a", time.monotonic() + 30)
    replies.open("b")
    with pytest.raises(ReplyTimeout):
        await _read(replies, "b", time.monotonic() - 1)
    with pytest.raises(KeyError):
        await _read(replies, "never", time.monotonic() + 30)
    assert "b" in replies
    replies.close("b")
    assert "b" not in replies
    await asyncio.sleep(0)


def test_chat_parameters_map_to_the_contract() -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,'
    body += b' "max_completion_tokens": 7, "logprobs": true, "top_logprobs": 3, "stop": "x",'
    body += b' "user": "u1"}'
    params = parse(ChatRequest, body).gen_params()
    assert (params.max_tokens, params.logprobs, params.stop, params.temperature) == (7, 3, ["x"], 1.0)
    with pytest.raises(InvalidInput, match="top_logprobs needs logprobs"):
        parse(ChatRequest, b'{"model": "m", "messages": [{"role": "user"}], "top_logprobs": 2}').gen_params()
    with pytest.raises(InvalidInput, match="temperature"):
        parse(ChatRequest, b'{"model": "m", "messages": [{"role": "user"}], "temperature": 2.5}')
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse(ChatRequest, b"{")


def test_completion_prompts() -> None:
    one = parse(CompletionRequest, b'{"model": "m", "prompt": ["only one"]}')
    assert one.text() == "only one" and one.gen_params().max_tokens == 16
    for bad in (b"[1, 2]", b"[[1, 2]]", b'["a", "b"]'):
        with pytest.raises(InvalidInput, match="prompt"):
            parse(CompletionRequest, b'{"model": "m", "prompt": ' + bad + b"}")
    with pytest.raises(InvalidInput, match="echo"):
        parse(CompletionRequest, b'{"model": "m", "prompt": "x", "echo": true}').gen_params()
    assert parse(EmbeddingRequest, b'{"model": "m", "input": "x"}').texts() == ["x"]
    with pytest.raises(InvalidInput, match="token arrays"):
        parse(EmbeddingRequest, b'{"model": "m", "input": [1, 2]}').texts()


def test_model_names() -> None:
    assert split_model("chat") == ("chat", None)
    assert split_model("chat:3") == ("chat", "3")
    assert split_model("acme~chat:prod") == ("acme~chat", "prod")
    for bad in ("", ":3", "chat:"):
        with pytest.raises(InvalidInput):
            split_model(bad)


def test_error_shape_and_paths() -> None:
    assert is_openai("POST", "/v1/chat/completions") and is_openai("GET", "/v1/models/x")
    assert not is_openai("POST", "/v1/models") and not is_openai("GET", "/v1/models/x/versions/1")
    assert status_of(422) == 400
    body = error_json(404, "not_found", "model 'x' not found")
    assert body == {
        "error": {
            "message": "model 'x' not found",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    assert (
        error_json(429, "rate_limited", "monthly token quota exhausted")["error"]["code"]
        == "insufficient_quota"
    )
    assert error_json(503, "unavailable", "x")["error"]["type"] == "server_error"


def test_token_limits_are_validated_and_capped_like_the_others() -> None:
    with pytest.raises(ValidationError):
        Limits(tokens_per_min=-1)
    assert Limits(monthly_tokens=5).any and Limits(monthly_tokens=5).tokens
    mine = KeyPower(1, frozenset({"infer"}), limits=Limits(tokens_per_min=100))
    more = KeyPower(1, frozenset({"infer"}), limits=Limits(tokens_per_min=200))
    less = KeyPower(1, frozenset({"infer"}), limits=Limits(tokens_per_min=50))
    assert excess(mine, more) is not None and "tokens_per_min" in str(excess(mine, more))
    assert excess(mine, KeyPower(1, frozenset({"infer"}))) is not None  # unlimited is more
    assert excess(mine, less) is None


def test_first_streamed_chunk_names_the_role() -> None:
    shape = shapes.Shape(True, "chatcmpl-1", 0, "m")
    first = shapes.chunk_event(shape, GenChunkMsg("r", 0, text="hi"), True, 0, include_usage=True)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "hi"} and first["usage"] is None
    later = shapes.chunk_event(shape, GenChunkMsg("r", 1, text="", finish="length"), False, 2, False)
    assert later["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
