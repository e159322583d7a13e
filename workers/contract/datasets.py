"""Fine-tune datasets: parse JSONL or CSV into tensors, with a line-numbered validation report.

JSONL: one object per line, `{"input": <number or nested list of numbers>, "label": <number or
list of numbers>}`, or for text models (hf-encoder) `{"text": "<a non-empty string>", "label": ...}`
(every row of a file the same kind), or for hf-causal-lm models chat rows (chat_data.parse_chat).
CSV: a header row, a `label` column, every other column a numeric feature.
Checks in two stages: `parse` (the file alone: bad JSON, missing fields, ragged or non-numeric
inputs, inconsistent shapes, empty file) and `check_against` (a model's signature and a task:
wrong tensor shape, unknown label). Both gather issues per line instead of stopping at the first.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from workers.contract.chat_data import looks_like_chat, parse_chat
from workers.contract.dataset_base import Dataset, Report, RowError, json_object
from workers.contract.dataset_base import Issue as Issue  # re-exported, as Dataset and Report

MAX_TEXT_CHARS = 100_000  # one text row
MAX_CSV_CELL_CHARS = 1_000  # one CSV cell (a number)
MAX_CLASSES = 100_000  # classification labels, where the model does not say how many it has
# what parsing one line may raise, besides our own checks: a number of more than 4,300 digits
# (ValueError), one too large for a float (OverflowError), nesting past the recursion limit
_LINE_ERRORS = (ValueError, ArithmeticError, RecursionError, TypeError, csv.Error)
Task = Literal["classification", "regression"]
CHAT_NEEDS_CAUSAL = "chat datasets need a model of format hf-causal-lm"
CAUSAL_NEEDS_CHAT = 'hf-causal-lm models take chat rows ({"messages": [...]}) or prompt/completion rows'


@dataclass(frozen=True, slots=True)
class _Text:
    value: str


def detect_format(filename: str, data: bytes) -> Literal["jsonl", "csv"]:
    if filename.lower().endswith(".csv"):
        return "csv"
    return "jsonl"


def _numeric(value: Any, what: str) -> np.ndarray:
    if isinstance(value, bool) or value is None or isinstance(value, str | dict):
        raise RowError(what, "must be a number or a list of numbers")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise RowError(what, "must be a number or a rectangular list of numbers") from exc
    if arr.dtype == object:
        raise RowError(what, "must be a rectangular list of numbers")
    if not np.all(np.isfinite(arr)):
        raise RowError(what, "contains NaN or infinity")
    return arr


def _json_row(text: str) -> tuple[Any, Any]:
    obj = json_object(text)
    unknown = sorted(set(obj) - {"input", "text", "label"})
    if unknown:
        raise RowError(unknown[0], "unknown field (expected input or text, and label)")
    if "text" in obj:
        return _text_field(obj), _label_field(obj)
    if "input" not in obj:
        raise RowError("input", "missing input (or text)")
    return obj["input"], _label_field(obj)


def _label_field(obj: dict[str, Any]) -> Any:
    if "label" not in obj:
        raise RowError("label", "missing label")
    return obj["label"]


def _text_field(obj: dict[str, Any]) -> _Text:
    if "input" in obj:
        raise RowError("text", "give either text or input, not both")
    value = obj["text"]
    if not isinstance(value, str):
        raise RowError("text", "must be a string")
    if not value.strip():
        raise RowError("text", "is empty")
    if len(value) > MAX_TEXT_CHARS:
        raise RowError("text", f"is longer than {MAX_TEXT_CHARS} characters")
    return _Text(value)


def _jsonl_rows(data: bytes) -> list[tuple[int, Any, Any] | tuple[int, RowError]]:
    out: list[tuple[int, Any, Any] | tuple[int, RowError]] = []
    for n, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            x, y = _json_row(raw)
            out.append((n, x, y))
        except RowError as err:
            out.append((n, err))
        except _LINE_ERRORS as exc:
            out.append((n, RowError("", f"cannot parse the line ({type(exc).__name__})")))
    return out


def _csv_rows(data: bytes) -> list[tuple[int, Any, Any] | tuple[int, RowError]]:
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace")))
    records = _csv_records(reader)
    first = next(records, None)
    if first is None:
        return []
    line, head = first
    if isinstance(head, RowError):
        return [(line, head)]
    header = [h.strip() for h in head]
    if "label" not in header:
        return [(1, RowError("label", "missing label column in the header"))]
    li = header.index("label")
    out: list[tuple[int, Any, Any] | tuple[int, RowError]] = []
    for n, row in records:
        if isinstance(row, RowError):
            out.append((n, row))
        elif any(c.strip() for c in row):
            out.append(_csv_row(n, row, header, li))
    return out


def _csv_records(reader: Any) -> Iterator[tuple[int, list[str] | RowError]]:
    """(line, cells) per record; a record the csv module cannot read (a field over its size
    limit, a NUL byte) is an error of its line, and reading goes on after it."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, RowError("", f"cannot parse the CSV record ({exc})")
            continue
        long = next((i for i, c in enumerate(row) if len(c) > MAX_CSV_CELL_CHARS), None)
        if long is not None:
            yield (
                reader.line_num,
                RowError(f"column {long + 1}", f"longer than {MAX_CSV_CELL_CHARS} characters"),
            )
            continue
        yield reader.line_num, row


def _csv_row(
    n: int, row: list[str], header: list[str], li: int
) -> tuple[int, Any, Any] | tuple[int, RowError]:
    if len(row) != len(header):
        return n, RowError("", f"expected {len(header)} columns, got {len(row)}")
    try:
        feats = [float(c) for i, c in enumerate(row) if i != li]
        label: Any = float(row[li]) if row[li].strip() else None
    except ValueError:
        return n, RowError("input", "every feature column must be a number")
    if label is None:
        return n, RowError("label", "missing label")
    return n, feats, label


def parse(data: bytes, fmt: str) -> tuple[Dataset | None, Report]:
    """Parse a dataset file; the Dataset is None when the report has errors."""
    if fmt == "jsonl" and looks_like_chat(data):
        return parse_chat(data)
    report = Report()
    rows = _csv_rows(data) if fmt == "csv" else _jsonl_rows(data)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    lines: list[int] = []
    shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    kind: str | None = None
    for row in rows:
        if len(row) == 2:
            report.add(row[0], row[1].field, row[1].message)
            continue
        n, x_raw, y_raw = row
        try:
            kind = _check_kind(kind, x_raw)
            x = np.asarray(x_raw.value, dtype=object) if kind == "text" else _numeric(x_raw, "input")
            y = _numeric(y_raw, "label")
            shapes = _check_shape(shapes, x.shape, y.shape)
        except RowError as err:
            report.add(n, err.field, err.message)
            continue
        except _LINE_ERRORS as exc:
            report.add(n, "", f"cannot parse the line ({type(exc).__name__})")
            continue
        xs.append(x)
        ys.append(y)
        lines.append(n)
    if not rows:
        report.add(0, "", "file is empty (no rows)")
    report.stats = _stats(xs, ys) | ({"input_kind": "text"} if kind == "text" else {})
    if not report.valid:
        return None, report
    inputs = np.array([str(x) for x in xs], dtype=object) if kind == "text" else np.stack(xs)
    return Dataset(inputs if kind == "text" else inputs.astype(np.float32), np.stack(ys), lines), report


def _check_kind(seen: str | None, x: Any) -> str:
    kind = "text" if isinstance(x, _Text) else "input"
    if seen is not None and kind != seen:
        raise RowError(kind, f"rows mix text and input: other rows have {seen}")
    return kind


def _check_shape(
    seen: tuple[tuple[int, ...], tuple[int, ...]] | None, x: tuple[int, ...], y: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if seen is None:
        return x, y
    if x != seen[0]:
        raise RowError("input", f"wrong tensor shape: {list(x)}, other rows have {list(seen[0])}")
    if y != seen[1]:
        raise RowError("label", f"wrong shape: {list(y)}, other rows have {list(seen[1])}")
    return seen


def _stats(xs: list[np.ndarray], ys: list[np.ndarray]) -> dict[str, Any]:
    stats: dict[str, Any] = {"rows": len(xs)}
    if not xs:
        return stats
    if xs[0].dtype != object:
        stats["input_shape"] = list(xs[0].shape)
    stats["label_shape"] = list(ys[0].shape)
    if ys[0].shape == () and all(float(y).is_integer() for y in ys):
        counts = Counter(int(y) for y in ys)
        stats["label_counts"] = {str(k): counts[k] for k in sorted(counts)}
    else:
        arr = np.stack(ys)
        stats["label_mean"] = float(arr.mean())
        stats["label_std"] = float(arr.std())
    return stats


def check_against(
    ds: Dataset,
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
    task: Task,
    known_labels: set[int] | None = None,
    report: Report | None = None,
    text_model: bool = False,
    max_classes: int = MAX_CLASSES,
    causal_lm: bool = False,
) -> Report:
    """Check a parsed dataset against a model's input/output shapes (without batch) and a task;
    a text model (hf-encoder) takes text rows, every other model tensor rows. Classification
    labels must be below the model's classes, or below `max_classes` where the output's width is
    open (a new head is made as wide as the labels need). Chat rows go with an hf-causal-lm model
    only, and then no signature or label applies."""
    report = report or Report(stats={"rows": len(ds)})
    if ds.is_chat or causal_lm:
        if not (ds.is_chat and causal_lm):
            field_, message = ("messages", CHAT_NEEDS_CAUSAL) if ds.is_chat else ("", CAUSAL_NEEDS_CHAT)
            report.add(ds.lines[0], field_, message)
        return report
    _check_inputs(ds, input_shape, text_model, report)
    if task == "classification":
        _check_classes(ds, output_shape, known_labels, report, max_classes)
    else:
        _check_regression(ds, output_shape, report)
    return report


def _check_inputs(ds: Dataset, input_shape: tuple[int, ...], text_model: bool, report: Report) -> None:
    if ds.is_text != text_model:
        field_ = "text" if ds.is_text else "input"
        wants = 'text rows ({"text": "...", "label": ...})' if text_model else "tensor rows (input)"
        report.add(ds.lines[0], field_, f"the model takes {wants} (all rows)")
        return
    row_shape = tuple(ds.inputs.shape[1:])
    if not text_model and (
        len(row_shape) != len(input_shape)
        or any(w not in (-1, g) for w, g in zip(input_shape, row_shape, strict=False))
    ):
        report.add(
            ds.lines[0],
            "input",
            f"wrong tensor shape: {list(row_shape)}, the model takes {list(input_shape)} per row (all rows)",
        )


def _check_classes(
    ds: Dataset, output_shape: tuple[int, ...], known: set[int] | None, report: Report, max_classes: int
) -> None:
    classes = output_shape[-1] if output_shape else -1
    if ds.labels.ndim != 1:
        report.add(ds.lines[0], "label", "classification labels must be single class indices")
        return
    for n, y in zip(ds.lines, ds.labels.tolist(), strict=True):
        if not float(y).is_integer() or y < 0:
            report.add(n, "label", f"label {y:g} is not a class index (0, 1, 2, ...)")
        elif classes > 0 and y >= classes:
            report.add(n, "label", f"unknown label {int(y)}: the model has {classes} classes")
        elif y >= max_classes:
            report.add(n, "label", f"label {y:g} is out of range: at most {max_classes} classes")
        elif known is not None and int(y) not in known:
            report.add(n, "label", f"unknown label {int(y)}: not in the training file")


def _check_regression(ds: Dataset, output_shape: tuple[int, ...], report: Report) -> None:
    width = output_shape[-1] if len(output_shape) > 0 else 1
    got = 1 if ds.labels.ndim == 1 else int(ds.labels.shape[1])
    if width > 0 and got != width:
        report.add(ds.lines[0], "label", f"regression targets have {got} values, the model outputs {width}")


def label_set(ds: Dataset) -> set[int]:
    return {int(y) for y in ds.labels.reshape(-1).tolist() if float(y).is_integer()}
