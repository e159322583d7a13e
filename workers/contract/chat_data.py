"""Chat fine-tuning datasets (for hf-causal-lm models), in OpenAI's JSONL shapes, with a
line-numbered validation report.

A file is one of two kinds, every row the same:
- chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": "...", "weight": 0|1}]}`;
  `weight` only on assistant messages (0: the message is context, not learned), `name` accepted
  and ignored; a system message only first; at least one assistant message to learn from.
- completion: `{"prompt": "...", "completion": "..."}`, kept as a user and an assistant message.
Tool calling (`tools`, `functions`, tool/function roles, `tool_calls`) is refused, as are content
parts (a list) and null content. Like `datasets.parse`, every line's first problem is reported.
A Dataset of chat rows holds ChatRow objects (dataset_base, re-exported here) and zero labels.
Standard library and numpy only: the gateway imports this and has no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from workers.contract.dataset_base import ChatMessage, ChatRow, Dataset, Report, RowError, json_object

MAX_MESSAGES = 512  # one row
MAX_CHAT_ROW_CHARS = 400_000  # one row: the characters of all its contents together
# a raw line longer than this is refused before JSON parsing (escapes such as \uXXXX take six
# characters for one, so a row within MAX_CHAT_ROW_CHARS fits in it)
MAX_CHAT_LINE_CHARS = 6 * MAX_CHAT_ROW_CHARS + 100_000
CHARS_PER_TOKEN = 4  # for the estimate only; exact counts come from the model's tokenizer at job time
ROLES = ("system", "user", "assistant")
_MESSAGE_KEYS = frozenset({"role", "content", "weight", "name"})
_TOOL_KEYS = frozenset({"tools", "parallel_tool_calls", "functions", "tool_calls", "function_call"})
_TOOLS = "tools and function calling are not supported: remove tools, functions and tool messages"
_LOOKAHEAD = 10  # non-empty lines looked at to tell a chat file from an input/text one


def looks_like_chat(data: bytes) -> bool:
    """Whether a JSONL file holds chat or prompt/completion rows: its first non-empty line that is
    a JSON value (of the first few) is an object with "messages" or "prompt"."""
    seen = 0
    for _, raw in _lines(data):
        if not raw.strip():
            continue
        seen += 1
        if seen > _LOOKAHEAD or len(raw) > MAX_CHAT_LINE_CHARS:
            return False
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            continue
        return isinstance(obj, dict) and ("messages" in obj or "prompt" in obj)
    return False


def parse_chat(data: bytes) -> tuple[Dataset | None, Report]:
    """Parse a chat or prompt/completion JSONL file; the Dataset (inputs: an object array of
    ChatRow, labels: zeros) is None when the report has errors."""
    report = Report()
    rows: list[ChatRow] = []
    lines: list[int] = []
    kind: str | None = None
    empty = True
    for n, raw in _lines(data):
        if not raw.strip():
            continue
        empty = False
        try:
            row = _row(raw)
            if kind is not None and row.kind != kind:
                raise RowError(_kind_field(row.kind), _mixed(kind))
        except RowError as err:
            report.add(n, err.field, err.message)
            continue
        except (ValueError, ArithmeticError, RecursionError, TypeError) as exc:
            report.add(n, "", f"cannot parse the line ({type(exc).__name__})")
            continue
        kind = row.kind
        rows.append(row)
        lines.append(n)
    if empty:
        report.add(0, "", "file is empty (no rows)")
    report.stats = chat_stats(rows, kind or "chat")
    if not report.valid:
        return None, report
    inputs = np.empty(len(rows), dtype=object)
    inputs[:] = rows  # element-wise: np.array(rows) would unpack the dataclasses' fields
    return Dataset(inputs, np.zeros(len(rows)), lines), report


def _lines(data: bytes) -> Iterator[tuple[int, str]]:
    """Numbered lines, split at newlines only: str.splitlines would also split inside a JSON
    string at characters JSON allows raw there (U+2028, U+0085, ...), breaking chat texts. A
    byte-order mark (Windows editors write one) is dropped."""
    for n, raw in enumerate(data.decode("utf-8-sig", errors="replace").split("\n"), start=1):
        yield n, raw.removesuffix("\r")


def chat_stats(rows: list[ChatRow], kind: str) -> dict[str, Any]:
    """Counts for the file object. Tokens are estimated (characters / 4, rounded up): the exact
    count depends on the model's tokenizer and chat template and is known at job time only."""
    per_row = [_estimate(sum(len(m.content) for m in r.messages)) for r in rows]
    return {
        "kind": kind,
        "rows": len(rows),
        "messages": sum(len(r.messages) for r in rows),
        "assistant_messages": sum(m.role == "assistant" for r in rows for m in r.messages),
        "estimated_tokens": sum(per_row),
        "max_row_estimated_tokens": max(per_row, default=0),
    }


def _estimate(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _kind_field(kind: str) -> str:
    return "messages" if kind == "chat" else "prompt"


def _mixed(seen: str) -> str:
    other = "chat rows (messages)" if seen == "chat" else "prompt/completion rows"
    return f"rows mix chat and prompt/completion: other rows are {other}"


def _row(raw: str) -> ChatRow:
    if len(raw) > MAX_CHAT_LINE_CHARS:
        raise RowError("", f"the line is longer than {MAX_CHAT_LINE_CHARS} characters")
    obj = json_object(raw)
    tools = sorted(_TOOL_KEYS & set(obj))
    if tools:
        raise RowError(tools[0], _TOOLS)
    if "messages" in obj and ("prompt" in obj or "completion" in obj):
        raise RowError("messages", "give either messages or prompt and completion, not both")
    if "messages" in obj:
        _only(obj, {"messages"}, "expected messages")
        return ChatRow(_messages(obj["messages"]), "chat")
    if "prompt" in obj or "completion" in obj:
        _only(obj, {"prompt", "completion"}, "expected prompt and completion")
        prompt = _content(obj, "prompt", "prompt")
        completion = _content(obj, "completion", "completion")
        _check_length(len(prompt) + len(completion), "prompt")
        return ChatRow((ChatMessage("user", prompt), ChatMessage("assistant", completion)), "completion")
    unknown = sorted(set(obj))
    if unknown:
        raise RowError(_key(unknown[0]), "unknown field (expected messages, or prompt and completion)")
    raise RowError("messages", "missing messages (or prompt and completion)")


def _key(name: str) -> str:
    """A field name from the file, cut to be echoed in a report."""
    return name if len(name) <= 40 else name[:40] + "..."


def _only(obj: dict[str, Any], allowed: set[str], expected: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise RowError(_key(unknown[0]), f"unknown field ({expected})")


def _content(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise RowError(where, f"missing {key}")
    value = obj[key]
    if not isinstance(value, str):
        raise RowError(where, "must be a string (content parts and null are not supported)")
    if not value.strip():
        raise RowError(where, "is empty")
    return value


def _check_length(chars: int, where: str) -> None:
    if chars > MAX_CHAT_ROW_CHARS:
        raise RowError(where, f"the row is {chars} characters, longer than {MAX_CHAT_ROW_CHARS}")


def _messages(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list):
        raise RowError("messages", "must be a list of messages")
    if not value:
        raise RowError("messages", "is empty")
    if len(value) > MAX_MESSAGES:
        raise RowError("messages", f"has {len(value)} messages, more than {MAX_MESSAGES}")
    out: list[ChatMessage] = []
    chars = 0
    for i, item in enumerate(value):
        msg = _message(item, f"messages[{i}]")
        if msg.role == "system" and i > 0:
            raise RowError(f"messages[{i}].role", "a system message may only come first")
        chars += len(msg.content)
        out.append(msg)
    _check_length(chars, "messages")
    if not any(m.role == "assistant" and m.weight != 0 for m in out):
        raise RowError("messages", "no assistant message to learn from (one with weight 1 or no weight)")
    return tuple(out)


def _message(item: Any, where: str) -> ChatMessage:
    if not isinstance(item, dict):
        raise RowError(where, "each message must be a JSON object")
    tools = sorted(_TOOL_KEYS & set(item))
    if tools:
        raise RowError(f"{where}.{tools[0]}", _TOOLS)
    unknown = sorted(set(item) - _MESSAGE_KEYS)
    if unknown:
        raise RowError(f"{where}.{_key(unknown[0])}", "unknown field (expected role, content, weight, name)")
    role = item.get("role")
    if role in ("tool", "function"):
        raise RowError(f"{where}.role", _TOOLS)
    if role not in ROLES:
        got = "missing role" if role is None else f"unknown role {str(role)[:40]!r}"
        raise RowError(f"{where}.role", f"{got} (expected system, user or assistant)")
    if "name" in item and not isinstance(item["name"], str):
        raise RowError(f"{where}.name", "must be a string")
    content = _content(item, "content", f"{where}.content")
    return ChatMessage(role, content, _weight(item, role, where))


def _weight(item: dict[str, Any], role: str, where: str) -> float | None:
    if "weight" not in item:
        return None
    if role != "assistant":
        raise RowError(f"{where}.weight", "weight is only allowed on assistant messages")
    value = item["weight"]
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1):
        raise RowError(f"{where}.weight", "must be 0 or 1")
    return float(value)
