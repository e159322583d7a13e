"""Which dataset files a version's lineage names (model_store/blob_refs.py), in every shape the
writers used: `{"id", "sha256"}` (fine-tunes, and compression jobs now) and the bare id
(prune-with-fine-tune and distil versions made before)."""

from __future__ import annotations

from typing import Any

import pytest

from model_store.blob_refs import lineage_files


@pytest.mark.parametrize(
    ("lineage", "files"),
    [
        (
            {"training_file": {"id": "file-t", "sha256": "a" * 64}, "validation_file": "file-v"},
            {"file-t", "file-v"},
        ),
        ({"training_file": "file-t", "validation_file": "file-v"}, {"file-t", "file-v"}),  # compression's
        ({"training_file": "file-t", "validation_file": None}, {"file-t"}),
        ({"training_file": None, "validation_file": {"id": "file-v"}}, {"file-v"}),
        ({"training_file": "", "method": "quantize"}, set()),
        ({"training_file": {"sha256": "a" * 64}, "validation_file": 3}, set()),  # no id: names nothing
        ({"checkpoint": {"id": "ftckpt-1"}}, set()),
        ({}, set()),
        (None, set()),
    ],
)
def test_both_shapes_of_a_lineage_file(lineage: dict[str, Any] | None, files: set[str]) -> None:
    assert lineage_files(lineage) == files
