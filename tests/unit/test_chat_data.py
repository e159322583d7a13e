"""Chat datasets (workers.contract.chat_data): OpenAI's rules, each a line-numbered issue."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest

from workers.contract.chat_data import (
    MAX_CHAT_LINE_CHARS,
    MAX_CHAT_ROW_CHARS,
    MAX_MESSAGES,
    ChatMessage,
    ChatRow,
    looks_like_chat,
    parse_chat,
)
from workers.contract.datasets import CHAT_NEEDS_CAUSAL, Dataset, check_against, parse


def _line(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _chat(*messages: Any) -> dict[str, Any]:
    return {"messages": list(messages)}


def _m(role: str, content: Any = "hi", **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


GOOD = _line(_chat(_m("system", "Be brief."), _m("user", "Hi"), _m("assistant", "Hello!")))
GOOD_COMPLETION = _line({"prompt": "2+2=", "completion": " 4"})


def _issues(*lines: bytes) -> list[tuple[int, str, str]]:
    ds, report = parse_chat(b"\n".join(lines) + b"\n")
    assert ds is None and not report.valid
    return [(i.line, i.field, i.message) for i in report.issues]


def _one_bad(line: bytes) -> tuple[str, str]:
    """The issue of a bad row between two good ones, which must be at line 2."""
    got = _issues(GOOD, line, GOOD)
    assert len(got) == 1 and got[0][0] == 2, got
    return got[0][1], got[0][2]


def test_a_good_chat_file_parses_to_chat_rows_with_stats() -> None:
    second = _line(
        _chat(_m("user", "a" * 10), _m("assistant", "b" * 7, weight=0), _m("user", "c"), _m("assistant", "d"))
    )
    ds, report = parse(GOOD + b"\n\n" + second + b"\n", "jsonl")
    assert ds is not None and report.valid
    assert ds.is_chat and not ds.is_text and len(ds) == 2 and ds.lines == [1, 3]
    assert ds.inputs.dtype == object and ds.inputs.shape == (2,)
    assert np.array_equal(ds.labels, np.zeros(2))
    row = ds.inputs[1]
    assert isinstance(row, ChatRow) and row.kind == "chat"
    assert row.messages[1] == ChatMessage("assistant", "b" * 7, 0.0)
    assert row.messages[3].weight is None
    assert report.stats == {
        "kind": "chat",
        "rows": 2,
        "messages": 7,
        "assistant_messages": 3,
        "estimated_tokens": 5 + 5,  # ceil((9 + 2 + 6) / 4) + ceil((10 + 7 + 1 + 1) / 4)
        "max_row_estimated_tokens": 5,
    }


def test_prompt_completion_rows_are_a_user_and_an_assistant_message() -> None:
    ds, report = parse(GOOD_COMPLETION + b"\n" + GOOD_COMPLETION, "jsonl")
    assert ds is not None and ds.is_chat
    assert ds.inputs[0] == ChatRow(
        (ChatMessage("user", "2+2="), ChatMessage("assistant", " 4")), "completion"
    )
    assert report.stats["kind"] == "completion" and report.stats["rows"] == 2
    assert report.stats["assistant_messages"] == 2 and report.stats["estimated_tokens"] == 4


@pytest.mark.parametrize(
    ("line", "field", "words"),
    [
        (b'{"messages": [', "", "bad JSON"),
        (b"[1, 2]", "", "must be a JSON object"),
        (b'"text"', "", "must be a JSON object"),
        (_line({**_chat(_m("user"), _m("assistant")), "extra": 1}), "extra", "unknown field"),
        (_line({**_chat(_m("user"), _m("assistant")), "tools": []}), "tools", "tools"),
        (
            _line({**_chat(_m("user"), _m("assistant")), "parallel_tool_calls": True}),
            "parallel_tool_calls",
            "not supported",
        ),
        (_line({**_chat(_m("user"), _m("assistant")), "functions": []}), "functions", "not supported"),
        (_line({"label": 1}), "label", "unknown field"),
        (_line({}), "messages", "missing messages"),
        (_line({"messages": {"role": "user"}}), "messages", "must be a list"),
        (_line({"messages": None}), "messages", "must be a list"),
        (_line({"messages": []}), "messages", "is empty"),
        (_line(_chat(_m("user"), "hi")), "messages[1]", "must be a JSON object"),
        (_line(_chat(_m("user"), _m("tool"))), "messages[1].role", "not supported"),
        (_line(_chat(_m("user"), _m("function"))), "messages[1].role", "not supported"),
        (_line(_chat(_m("user"), _m("developer"))), "messages[1].role", "unknown role 'developer'"),
        (_line(_chat({"content": "x"}, _m("assistant"))), "messages[0].role", "missing role"),
        (_line(_chat(_m("user"), _m("assistant", tool_calls=[]))), "messages[1].tool_calls", "not supported"),
        (_line(_chat(_m("user"), _m("assistant", refusal="x"))), "messages[1].refusal", "unknown field"),
        (_line(_chat(_m("user", name=3), _m("assistant"))), "messages[0].name", "must be a string"),
        (_line(_chat({"role": "user"}, _m("assistant"))), "messages[0].content", "missing content"),
        (_line(_chat(_m("user", None), _m("assistant"))), "messages[0].content", "must be a string"),
        (
            _line(_chat(_m("user", [{"type": "text", "text": "x"}]), _m("assistant"))),
            "messages[0].content",
            "content parts",
        ),
        (_line(_chat(_m("user", ""), _m("assistant"))), "messages[0].content", "is empty"),
        (_line(_chat(_m("user", " \n"), _m("assistant"))), "messages[0].content", "is empty"),
        (
            _line(_chat(_m("user", weight=1), _m("assistant"))),
            "messages[0].weight",
            "only allowed on assistant",
        ),
        (_line(_chat(_m("user"), _m("assistant", weight=0.5))), "messages[1].weight", "0 or 1"),
        (_line(_chat(_m("user"), _m("assistant", weight=True))), "messages[1].weight", "0 or 1"),
        (_line(_chat(_m("user"), _m("assistant", weight="1"))), "messages[1].weight", "0 or 1"),
        (
            _line(_chat(_m("user"), _m("assistant", weight=0))),
            "messages",
            "no assistant message to learn from",
        ),
        (_line(_chat(_m("system"), _m("user"))), "messages", "no assistant message to learn from"),
        (_line(_chat(_m("user"), _m("system"), _m("assistant"))), "messages[1].role", "only come first"),
        (_line({"prompt": "a", "completion": "b", "x": 1}), "x", "unknown field"),
        (_line({"prompt": "a"}), "completion", "missing completion"),
        (_line({"completion": "b"}), "prompt", "missing prompt"),
        (_line({"prompt": "", "completion": "b"}), "prompt", "is empty"),
        (_line({"prompt": "a", "completion": 3}), "completion", "must be a string"),
        (_line({"prompt": "a", "completion": "b", **_chat(_m("user"))}), "messages", "not both"),
        (GOOD_COMPLETION, "prompt", "rows mix chat and prompt/completion"),
    ],
)
def test_each_rule_is_an_issue_of_its_line(line: bytes, field: str, words: str) -> None:
    got_field, message = _one_bad(line)
    assert got_field == field and words in message, message


def test_weight_one_and_names_are_accepted() -> None:
    line = _line(_chat(_m("user", name="ann"), _m("assistant", weight=0), _m("assistant", weight=1.0)))
    ds, report = parse_chat(line)
    assert ds is not None and report.valid
    assert [m.weight for m in ds.inputs[0].messages] == [None, 0.0, 1.0]


def test_issues_are_gathered_across_lines_and_later_rows_of_another_kind_are_refused() -> None:
    got = _issues(GOOD_COMPLETION, b"nope", GOOD, _line({"prompt": "x"}), GOOD_COMPLETION)
    assert [(n, f) for n, f, _ in got] == [(2, ""), (3, "messages"), (4, "completion")]
    assert "other rows are prompt/completion rows" in got[1][2]


def test_an_empty_file_is_an_issue() -> None:
    ds, report = parse_chat(b"\n  \n")
    assert ds is None and [(i.line, i.message) for i in report.issues] == [(0, "file is empty (no rows)")]


def test_too_many_messages_is_one_issue_and_is_refused_before_reading_them() -> None:
    many = [_m("user"), _m("assistant")] * (MAX_MESSAGES // 2) + [_m("user")]
    field, message = _one_bad(_line(_chat(*many)))
    assert field == "messages" and f"more than {MAX_MESSAGES}" in message
    empties = _line({"messages": [{}] * 10_000})  # 10k empty messages: one issue, quickly
    t0 = time.monotonic()
    assert _one_bad(empties)[0] == "messages"
    assert time.monotonic() - t0 < 2
    exactly = [_m("user"), _m("assistant")] * (MAX_MESSAGES // 2)
    assert parse_chat(_line(_chat(*exactly)))[0] is not None


def test_long_rows_are_refused_by_their_total_characters() -> None:
    half = "a" * (MAX_CHAT_ROW_CHARS // 2)
    assert parse_chat(_line(_chat(_m("user", half), _m("assistant", half))))[0] is not None
    field, message = _one_bad(_line(_chat(_m("user", half), _m("assistant", half + "b"))))
    assert field == "messages" and f"longer than {MAX_CHAT_ROW_CHARS}" in message
    field, message = _one_bad(_line({"prompt": half, "completion": half + "b"}))
    assert field == "prompt" and "longer than" in message


def test_hostile_lines_are_issues_of_their_line() -> None:
    huge = b'{"messages": "' + b"x" * (MAX_CHAT_LINE_CHARS + 1) + b'"}'
    assert _one_bad(huge) == ("", f"the line is longer than {MAX_CHAT_LINE_CHARS} characters")
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert _one_bad(deep) == ("", "bad JSON (nested too deeply)")
    digits = b'{"messages": [{"role": "assistant", "content": "x", "weight": ' + b"1" * 5000 + b"}]}"
    assert _one_bad(digits) == ("", "bad JSON (a number has too many digits)")
    nested = _line(_chat(_m("user", {"a": [[[[1]]]]}), _m("assistant")))
    assert _one_bad(nested)[0] == "messages[0].content"
    role = _line(_chat(_m("x" * 10_000), _m("assistant")))
    assert len(_one_bad(role)[1]) < 200  # the echoed role is cut
    key = _line({**_chat(_m("user"), _m("assistant")), "k" * 100_000: 1})
    assert _one_bad(key)[0] == "k" * 40 + "..."  # an echoed field name too
    key = _line(_chat({**_m("user"), "k" * 100_000: 1}, _m("assistant")))
    assert _one_bad(key)[0] == "messages[0]." + "k" * 40 + "..."


def test_non_utf8_bytes_are_replaced_not_raised() -> None:
    line = (
        b'{"messages": [{"role": "user", "content": "caf\xe9 \xff"}, {"role": "assistant", "content": "ok"}]}'
    )
    ds, report = parse(line + b"\n\xff\xfe\x00\n", "jsonl")
    assert ds is None and [(i.line, i.field) for i in report.issues] == [(2, "")]
    ds, _ = parse_chat(line)
    assert ds is not None and "\ufffd" in ds.inputs[0].messages[0].content


def test_looks_like_chat() -> None:
    assert looks_like_chat(b"\n" + GOOD)
    assert looks_like_chat(GOOD_COMPLETION)
    assert looks_like_chat(b"oops\n" + GOOD)  # a broken first line does not hide the file's kind
    assert not looks_like_chat(b'{"text": "a", "label": 0}\n' + GOOD)
    assert not looks_like_chat(b'{"input": [1], "label": 0}\n')
    assert not looks_like_chat(b"a,label\n1,0\n")
    assert not looks_like_chat(b"")
    assert not looks_like_chat(b"[" * 100_000 + b"\n")
    assert not looks_like_chat(b'"messages"\n')


def test_input_and_text_files_parse_as_before() -> None:
    ds, report = parse(b'{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n', "jsonl")
    assert ds is not None and ds.is_text and not ds.is_chat and "kind" not in report.stats
    ds, _ = parse(b'{"input": [1, 2], "label": 0}\n', "jsonl")
    assert ds is not None and not ds.is_text and not ds.is_chat
    ds, _ = parse(b'{"messages": [], "label": 0}\n', "csv")  # CSV is never chat
    assert ds is None
    empty = Dataset(np.empty(0, dtype=object), np.zeros(0), [])
    assert not empty.is_chat and empty.is_text


def test_check_against_needs_a_causal_lm_for_chat_rows_and_chat_rows_for_one() -> None:
    chat, _ = parse(GOOD, "jsonl")
    text, _ = parse(b'{"text": "a", "label": 0}\n', "jsonl")
    assert chat is not None and text is not None
    for text_model in (False, True):
        report = check_against(chat, (4,), (3,), "classification", text_model=text_model)
        assert [(i.line, i.field, i.message) for i in report.issues] == [(1, "messages", CHAT_NEEDS_CAUSAL)]
    assert check_against(chat, (), (), "classification", causal_lm=True).valid
    assert check_against(chat, (), (), "regression", causal_lm=True).valid
    report = check_against(text, (), (), "classification", causal_lm=True)
    assert not report.valid and "hf-causal-lm models take chat rows" in report.issues[0].message


def test_lines_split_at_newlines_only_and_a_byte_order_mark_is_dropped() -> None:
    text = "one\u2028two\x85three\x1cfour\rfive"
    line = json.dumps(_chat(_m("user", text), _m("assistant", text)), ensure_ascii=False).encode()
    ds, report = parse(b"\xef\xbb\xbf" + line + b"\r\n" + line + b"\r\n", "jsonl")  # with a BOM
    assert ds is not None and report.valid and ds.lines == [1, 2]
    assert ds.inputs[0].messages[1].content == text
