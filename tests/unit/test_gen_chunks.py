"""The generation chunk buffer: flush policy (first token at once, every N tokens or M ms, the
end), seq order, per-choice merging, the request's last chunk last; and peeking at broken entries."""

from __future__ import annotations

import orjson

from workers.contract.generation import GenUsage
from workers.generation.admit import peek
from workers.generation.backend import GenEvent
from workers.generation.chunks import ChunkBuffer

FLUSH = {"stream": True, "flush_tokens": 4, "flush_s": 0.02}


def tok(i: int, first: bool = False, index: int = 0) -> GenEvent:
    return GenEvent("r1", index=index, text=f"t{i} ", tokens=1, first_token=first)


def test_first_token_is_due_at_once_then_every_four_tokens() -> None:
    b = ChunkBuffer("r1")
    b.add(tok(0, first=True), 0.0)
    assert b.due(0.0, **FLUSH)
    first = b.take()
    assert [(c.seq, c.text, c.tokens) for c in first] == [(0, "t0 ", 1)]
    for i in range(1, 4):
        b.add(tok(i), 0.001)
        assert not b.due(0.001, **FLUSH)
    b.add(tok(4), 0.001)
    assert b.due(0.001, **FLUSH)
    (chunk,) = b.take()
    assert (chunk.seq, chunk.text, chunk.tokens) == (1, "t1 t2 t3 t4 ", 4)


def test_a_token_older_than_flush_ms_is_due() -> None:
    b = ChunkBuffer("r1")
    b.add(tok(0, first=True), 0.0)
    b.take()
    b.add(tok(1), 1.0)
    assert not b.due(1.019, **FLUSH)
    assert b.due(1.02, **FLUSH)


def test_the_end_is_due_and_its_chunk_is_last() -> None:
    b = ChunkBuffer("r1")
    b.add(tok(0, first=True), 0.0)
    b.take()
    b.add(tok(1, index=1), 0.0)
    b.add(GenEvent("r1", 0, "end", 1, finish="length", done=True, usage=GenUsage(3, 2)), 0.0)
    b.add(tok(2, index=1), 0.0)
    assert b.due(0.0, **FLUSH)
    chunks = b.take()
    assert [c.seq for c in chunks] == [1, 2]
    assert chunks[-1].done and chunks[-1].finish == "length" and chunks[-1].usage == GenUsage(3, 2)
    assert chunks[0].index == 1 and chunks[0].text == "t1 t2 "  # merged per choice


def test_a_non_streaming_request_is_due_only_at_its_end() -> None:
    b = ChunkBuffer("r1")
    opts = {**FLUSH, "stream": False}
    for i in range(10):
        b.add(tok(i, first=i == 0), float(i))
        assert not b.due(float(i) + 5, **opts)
    b.add(GenEvent("r1", finish="stop", done=True, usage=GenUsage(1, 10)), 10.0)
    assert b.due(10.0, **opts)
    (chunk,) = b.take()
    assert chunk.seq == 0 and chunk.text == "".join(f"t{i} " for i in range(10)) and chunk.done


def test_end_appends_an_error_chunk_after_what_is_buffered() -> None:
    b = ChunkBuffer("r1", worker="w")
    b.add(tok(0, first=True), 0.0)
    b.end("deadline_exceeded", "late")
    chunks = b.take()
    assert [c.seq for c in chunks] == [0, 1]
    assert chunks[1].finish == "error" and chunks[1].code == "deadline_exceeded" and chunks[1].done
    assert chunks[1].worker == "w"


def test_peek_names_id_and_reply_only_when_both_are_strings() -> None:
    assert peek({b"h": orjson.dumps({"id": "a", "reply": "k:reply:g"})}) == ("a", "k:reply:g")
    assert peek({b"h": b"not json"}) is None
    assert peek({b"h": orjson.dumps({"id": 5, "reply": "x"})}) is None
    assert peek({b"h": orjson.dumps(["id"])}) is None
    assert peek({}) is None
    assert peek({b"h": orjson.dumps({"id": "x" * 500, "reply": "k:reply:g"})}) is None
