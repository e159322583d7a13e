"""The shared shapes of fine-tune datasets: a parsed Dataset, its line-numbered Report, the rows of
chat datasets (ChatMessage, ChatRow); datasets.py and chat_data.py parse into them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_ISSUES = 50


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str
    weight: float | None = None  # only on assistant messages; 0 or 1 (OpenAI); None = 1


@dataclass(frozen=True, slots=True)
class ChatRow:
    messages: tuple[ChatMessage, ...]
    kind: str  # "chat" ({"messages": [...]}) or "completion" ({"prompt", "completion"})


@dataclass(frozen=True, slots=True)
class Issue:
    line: int
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


@dataclass(slots=True)
class Report:
    issues: list[Issue] = field(default_factory=list)
    total_issues: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.total_issues == 0

    def add(self, line: int, field_: str, message: str) -> None:
        self.total_issues += 1
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(Issue(line, field_, message))

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "errors": [i.as_dict() for i in self.issues],
            "total_errors": self.total_issues,
            "stats": self.stats,
        }

    def summary(self, limit: int = 5) -> str:
        parts = [
            f"line {i.line}: {i.field}: {i.message}" if i.field else f"line {i.line}: {i.message}"
            for i in self.issues[:limit]
        ]
        more = self.total_issues - len(parts)
        return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


@dataclass(slots=True)
class Dataset:
    inputs: np.ndarray  # float32 [N, *input_shape], or object [N] of str (text) or ChatRow (chat)
    labels: np.ndarray  # float64 [N] or [N, K]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def is_text(self) -> bool:
        return bool(self.inputs.dtype == object) and not self.is_chat

    @property
    def is_chat(self) -> bool:
        return len(self) > 0 and isinstance(self.inputs[0], ChatRow)


class RowError(Exception):
    def __init__(self, field_: str, message: str) -> None:
        super().__init__(message)
        self.field = field_
        self.message = message


def json_object(text: str) -> dict[str, Any]:
    """One JSONL line as an object, or a RowError saying why not."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError("", f"bad JSON ({exc.msg} at column {exc.colno})") from exc
    except RecursionError as exc:
        raise RowError("", "bad JSON (nested too deeply)") from exc
    except ValueError as exc:  # an integer of more digits than Python converts
        raise RowError("", "bad JSON (a number has too many digits)") from exc
    if not isinstance(obj, dict):
        raise RowError("", "each line must be a JSON object")
    return obj
