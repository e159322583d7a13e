"""Datasets that used to raise out of the parser (500): each is a line-numbered issue instead."""

from __future__ import annotations

import pytest

from workers.contract.datasets import MAX_CLASSES, MAX_TEXT_CHARS, check_against, parse

GOOD = b'{"input": [1, 2], "label": 0}\n'


def _issues(data: bytes, fmt: str = "jsonl") -> set[tuple[int, str]]:
    ds, report = parse(data, fmt)
    assert ds is None and not report.valid
    return {(i.line, i.field) for i in report.issues}


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (b'{"input": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b', "label": 0}', ""),  # RecursionError
        (b'{"input": [1, 2], "label": ' + b"1" * 5000 + b"}", ""),  # int of more than 4300 digits
        (b'{"input": [1, 2], "label": ' + b"9" * 400 + b"}", "label"),  # too large for a float
        (b'{"input": [' + b"9" * 400 + b", 2], " + b'"label": 0}', "input"),
        (b'{"input": ' + b"[" * 200 + b"1" + b"]" * 200 + b', "label": 0}', "input"),  # too many dims
        (b'{"text": "' + b"a" * (MAX_TEXT_CHARS + 1) + b'", "label": 0}', "text"),
    ],
    ids=["deep", "digits", "float-overflow", "input-overflow", "dims", "long-text"],
)
def test_jsonl_line_that_cannot_be_parsed_is_a_line_numbered_issue(line: bytes, field: str) -> None:
    assert _issues(GOOD + line + b"\n" + GOOD) == {(2, field)}


def test_huge_csv_field_is_an_issue_of_its_line_and_parsing_goes_on() -> None:
    data = b"a,label\n1,0\n" + b'"' + b"1" * 200_000 + b'",1\n' + b"2,x\n" + b"3,1," + b"4" * 2000 + b"\n"
    ds, report = parse(data, "csv")
    assert ds is None
    got = {(i.line, i.field) for i in report.issues}
    assert got == {(3, ""), (4, "input"), (5, "column 3")}
    assert "field larger than field limit" in report.issues[0].message


def test_csv_long_number_in_bounds_still_parses() -> None:
    ds, report = parse(b"a,label\n" + b"0." + b"5" * 900 + b",1\n2,0\n", "csv")
    assert ds is not None and report.valid


def test_labels_past_the_class_bound_are_refused_by_line() -> None:
    data = b'{"text": "a", "label": 0}\n{"text": "b", "label": 3000000}\n{"text": "c", "label": 1}\n'
    ds, report = parse(data, "jsonl")
    assert ds is not None and report.valid  # a regression target could be that large
    # an open-width head (a text model's new head): bounded by max_classes
    bad = check_against(ds, (), (-1,), "classification", text_model=True)
    assert [(i.line, i.field) for i in bad.issues] == [(2, "label")]
    assert f"at most {MAX_CLASSES} classes" in bad.issues[0].message
    small = check_against(ds, (), (-1,), "classification", text_model=True, max_classes=2)
    assert [i.line for i in small.issues] == [2]
    assert check_against(ds, (), (-1,), "regression", text_model=True).valid
