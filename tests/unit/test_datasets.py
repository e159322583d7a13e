"""Dataset parsing and the line-numbered validation report."""

from __future__ import annotations

from tests.ft_data import csv_bytes, jsonl, rows
from workers.contract.datasets import check_against, label_set, parse


def test_jsonl_and_csv_parse_to_the_same_tensors() -> None:
    x, y = rows(20, 1)
    a, ra = parse(jsonl(x, y), "jsonl")
    b, rb = parse(csv_bytes(x, y), "csv")
    assert a is not None and b is not None and ra.valid and rb.valid
    assert a.inputs.shape == (20, 4) == b.inputs.shape
    assert (a.labels == b.labels).all()
    assert ra.stats["rows"] == 20 and sum(ra.stats["label_counts"].values()) == 20


def test_bad_rows_are_reported_by_line_and_field() -> None:
    data = (
        b'{"input": [1, 2, 3, 4], "label": 0}\n'
        b'{"input": [1, 2, 3, 4], "label": 1\n'  # 2: bad JSON
        b'{"input": [1, 2, 3, 4]}\n'  # 3: missing label
        b"\n"
        b'{"input": [1, 2, 3], "label": 1}\n'  # 5: wrong shape
        b'{"input": ["a", 2, 3, 4], "label": 1}\n'  # 6: not numeric
        b'{"input": [1, 2, 3, 4], "label": 2, "x": 1}\n'  # 7: unknown field
        b"[1, 2]\n"
    )  # 8: not an object
    ds, report = parse(data, "jsonl")
    assert ds is None and not report.valid
    got = {(i.line, i.field) for i in report.issues}
    assert got == {(2, ""), (3, "label"), (5, "input"), (6, "input"), (7, "x"), (8, "")}
    assert "bad JSON" in next(i.message for i in report.issues if i.line == 2)
    assert "wrong tensor shape" in next(i.message for i in report.issues if i.line == 5)
    assert "line 2" in report.summary()


def test_empty_file_and_csv_errors() -> None:
    _ds, report = parse(b"", "jsonl")
    assert report.as_dict()["errors"] == [{"line": 0, "field": "", "message": "file is empty (no rows)"}]
    _ds, report = parse(b"a,b\n1,2\n", "csv")
    assert report.issues[0].field == "label"
    _ds, report = parse(b"a,label\n1,2\nx,1\n3\n", "csv")
    assert {(i.line, i.field) for i in report.issues} == {(3, "input"), (4, "")}


def test_checks_against_a_model() -> None:
    x, y = rows(10, 2)
    ds, _ = parse(jsonl(x, y), "jsonl")
    assert ds is not None
    assert check_against(ds, (4,), (3,), "classification").valid
    bad_shape = check_against(ds, (5,), (3,), "classification")
    assert "wrong tensor shape" in bad_shape.issues[0].message
    y2 = y.copy()
    y2[3] = 7
    ds2, _ = parse(jsonl(x, y2), "jsonl")
    assert ds2 is not None
    report = check_against(ds2, (4,), (3,), "classification")
    assert [(i.line, i.field) for i in report.issues] == [(4, "label")]
    assert "unknown label 7" in report.issues[0].message
    # a validation label the training file never had
    report = check_against(ds, (4,), (3,), "classification", known_labels=label_set(ds) - {int(y[0])})
    assert report.issues and report.issues[0].line == 1
    assert check_against(ds, (4,), (1,), "regression").valid


def test_text_rows_parse_and_are_checked_by_line() -> None:
    ds, report = parse(b'{"text": "hello", "label": 1}\n{"text": "bye there", "label": 0}\n', "jsonl")
    assert ds is not None and report.valid and ds.is_text
    assert list(ds.inputs) == ["hello", "bye there"] and ds.labels.tolist() == [1, 0]
    assert report.stats["input_kind"] == "text" and report.stats["label_counts"] == {"0": 1, "1": 1}
    assert check_against(ds, (), (-1,), "classification", text_model=True).valid
    wrong = check_against(ds, (4,), (3,), "classification")
    assert [(i.line, i.field) for i in wrong.issues] == [(1, "text")]

    bad = (
        b'{"text": "fine", "label": 0}\n'
        b'{"text": 3, "label": 0}\n'  # 2: not a string
        b'{"text": "  ", "label": 0}\n'  # 3: empty
        b'{"text": "x", "input": [1], "label": 0}\n'  # 4: both
        b'{"text": "no label"}\n'  # 5: missing label
        b'{"input": [1, 2], "label": 0}\n'  # 6: mixes kinds
    )
    ds, report = parse(bad, "jsonl")
    assert ds is None
    assert {(i.line, i.field) for i in report.issues} == {
        (2, "text"),
        (3, "text"),
        (4, "text"),
        (5, "label"),
        (6, "input"),
    }
    x, y = rows(4, 1)
    numeric, _ = parse(jsonl(x, y), "jsonl")
    assert numeric is not None
    refused = check_against(numeric, (), (-1,), "classification", text_model=True)
    assert [(i.line, i.field) for i in refused.issues] == [(1, "input")]
