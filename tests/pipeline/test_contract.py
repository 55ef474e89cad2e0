"""The output contract: one builder for ok and error rows, error kinds, documented columns."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.contract import (
    COLUMN_NAMES,
    COLUMNS,
    ErrorKind,
    Predictions,
    RunStamp,
    build_rows,
    output_schema,
    video_columns,
)

DOCS = Path(__file__).parents[2] / "docs" / "labelling.md"


def test_ok_and_error_rows_from_one_builder():
    schema = output_schema(4)
    video = video_columns([{"num_frames": 9, "fps": 25.0, "duration_s": 0.36, "width": 8,
                            "height": 6, "frame_indices": [1, 3]},
                           None,
                           {"num_frames": 5, "fps": float("nan"), "duration_s": 0.2,
                            "width": 8, "height": 6, "frame_indices": [0, 2]}])
    preds = Predictions(np.array([[1, 0], [0, 1], [0, 1]]), np.array([[0.7, 0.3]] * 3),
                        ["a", "b"], np.ones((3, 4)))
    table = build_rows(schema, RunStamp("m", "3", "run", "uniform", 2),
                       video_uri=["u0", "u1", "u2"],
                       source_version=["v0", "v1", "v2"],
                       error_kind=[None, ErrorKind.CORRUPT, "model_error"],
                       error_message=["ignored for ok rows", "bad", "nan"], video=video,
                       predictions=preds)
    assert table.schema == schema and table.column_names == list(COLUMN_NAMES)
    ok, bad, model_err = table.to_pylist()
    assert (ok["status"], ok["error_kind"], ok["error_message"]) == ("ok", None, None)
    assert ok["top_k_labels"] == ["b", "a"] and ok["top_k_ids"] == [1, 0]
    assert ok["embedding"] == [1.0] * 4 and ok["frame_indices"] == [1, 3]
    assert (bad["status"], bad["error_kind"], bad["error_message"]) == ("error", "corrupt", "bad")
    assert bad["top_k_labels"] is None and bad["num_frames"] is None
    assert np.isnan(bad["embedding"]).all()
    # decoded but not labelled: what decoding measured stays, predictions do not
    assert model_err["num_frames"] == 5 and model_err["top_k_scores"] is None
    assert model_err["fps"] is None  # a NaN the container gave becomes a null
    assert {r["run_id"] for r in table.to_pylist()} == {"run"}


def test_rows_without_predictions_or_video():
    table = build_rows(output_schema(2, "float16"), RunStamp("m", "1", "r", "keyframe", 8),
                       video_uri=["u"], source_version=[""], error_kind=[ErrorKind.MISSING],
                       error_message=["gone"])
    row = table.to_pylist()[0]
    assert row["error_kind"] == "missing" and row["width"] is None
    assert (row["sampling"], row["num_segments"]) == ("keyframe", 8)
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), 2)


def test_an_unknown_error_kind_is_refused():
    with pytest.raises(ValueError, match="boom"):
        build_rows(output_schema(2), RunStamp("m", "1", "r", "uniform", 8), video_uri=["u"],
                   source_version=[""], error_kind=["boom"], error_message=["x"])


def test_every_error_kind_has_a_meaning_and_a_verdict():
    for kind in ErrorKind:
        assert kind.meaning and isinstance(kind.final, bool)
    assert ErrorKind.CORRUPT.final and not ErrorKind.READ_ERROR.final


def test_the_docs_describe_every_column_and_error_kind():
    text = DOCS.read_text()
    for col in COLUMNS:
        assert re.search(rf"`{col.name}`", text), col.name
    for kind in ErrorKind:
        assert f"`{kind.value}`" in text, kind.value
