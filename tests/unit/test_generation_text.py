"""Incremental detokenisation (never a split character) and stop sequences (never text past one)."""

from __future__ import annotations

import pytest

from tests.causal_tiny import byte_tokenizer
from workers.generation.text import Detokenizer, StopText


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer(), eos_token="</s>")


@pytest.mark.parametrize("text", ["héllo wörld", "€100 → ¥ 🙂 ok", "日本語のテキスト", " leading space"])
def test_one_token_at_a_time_never_splits_a_character(tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.encode())  # one token per byte: multi-byte characters span tokens
    detok = Detokenizer(tokenizer, tokenizer.encode("prompt:", add_special_tokens=False))
    pieces = [detok.add([i]) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_special_tokens_are_not_shown(tokenizer) -> None:  # type: ignore[no-untyped-def]
    detok = Detokenizer(tokenizer, [])
    ids = [*tokenizer.encode("ok", add_special_tokens=False), tokenizer.eos_token_id]
    assert "".join(detok.add([i]) for i in ids) + detok.flush() == "ok"


def test_an_incomplete_character_at_the_end_shows_as_a_replacement(tokenizer) -> None:  # type: ignore[no-untyped-def]
    detok = Detokenizer(tokenizer, [])
    ids = tokenizer.encode("a€", add_special_tokens=False)[:-1]
    assert detok.add(ids[:1]) == "a"
    assert detok.add(ids[1:]) == ""  # two of the euro sign's three bytes: held
    assert detok.flush() == "\ufffd"


def _feed(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    s = StopText(stops)
    out = [s.push(p) for p in pieces]
    if not s.stopped:
        out.append(s.flush())
    return out, s.stopped


def test_a_stop_split_over_pieces_is_never_let_out() -> None:
    out, stopped = _feed(["STOP"], ["abc S", "T", "O", "P more"])
    assert stopped and "".join(out) == "abc "
    assert out[0] == "abc "  # "S" is held: it may begin the stop


def test_a_held_tail_that_is_not_a_stop_comes_out() -> None:
    out, stopped = _feed(["STOP"], ["abc ST", "ART"])
    assert not stopped and "".join(out) == "abc START"
    out, stopped = _feed(["STOP"], ["abc ST"])  # the sequence ended: the tail is flushed
    assert not stopped and "".join(out) == "abc ST"


def test_the_earliest_of_several_stops_wins() -> None:
    out, stopped = _feed(["xyz", "b"], ["a", "bcxyz"])
    assert stopped and "".join(out) == "a"


def test_nothing_after_a_stop() -> None:
    s = StopText(["\n"])
    assert s.push("line one\nline two") == "line one"
    assert s.push("more") == "" and s.flush() == ""
