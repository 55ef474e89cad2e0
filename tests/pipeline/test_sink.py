"""Part files (rolled, published whole) and what resume reads back from them."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline import resume
from pipeline.contract import COLUMN_NAMES, RunStamp, build_rows, output_schema
from pipeline.errors import LabelError
from pipeline.sink import PartWriter, SinkConfig

SCHEMA = output_schema(8)


def rows(n: int, start: int = 0, version: str = "m1") -> pa.Table:
    uris = [f"s3://b/v{i}.mp4" for i in range(start, start + n)]
    return build_rows(SCHEMA, RunStamp("m", version, "run1"), video_uri=uris,
                      source_version=[f"e{i}" for i in range(start, start + n)],
                      error_kind=["corrupt"] * n, error_message=["bad"] * n)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_parts_roll_by_rows_and_resume_reads_them_back(where, tmp_path, request):
    if where == "s3":
        out = f"s3://{request.getfixturevalue('bucket')}/labels/"
    else:
        out = str(tmp_path / "labels")
    writer = PartWriter(out, SCHEMA, "run1", SinkConfig(max_rows=10, row_group_rows=4))
    for start in range(0, 25, 5):
        writer.write(rows(5, start))
    assert len(writer.parts) == 2  # 10 + 10 committed, 5 still open
    # resume sees only what was committed
    assert len(resume.done_keys(out, "m", "m1")) == 20
    writer.close()
    assert len(writer.parts) == 3
    done = resume.done_keys(out, "m", "m1")
    assert done == {(f"s3://b/v{i}.mp4", f"e{i}") for i in range(25)}
    assert resume.done_keys(out, "m", "other-version") == set()
    # the same version number of another model has labelled nothing here
    assert resume.done_keys(out, "another-model", "m1") == set()
    parts = resume.committed_parts(out)
    assert [p.uri for p in parts] == writer.parts
    if where == "local":
        # plain Parquet that pyarrow.dataset reads as one table (embedding included)
        table = pads.dataset(out).to_table()
        assert table.num_rows == 25 and table.column_names == list(COLUMN_NAMES)
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), 8)
        # row groups gather incoming batches (5 rows each here) up to row_group_rows
        assert pq.ParquetFile(writer.parts[0]).metadata.num_row_groups == 2


def test_killed_writer_leaves_only_committed_parts_and_temp_is_cleaned(tmp_path):
    out = tmp_path / "labels"
    writer = PartWriter(str(out), SCHEMA, "run1", SinkConfig(max_rows=10, row_group_rows=2))
    writer.write(rows(10))  # one part committed
    writer.write(rows(2, 10))  # 2 rows in an open temp file
    temps = list(out.glob(".part-*.tmp"))
    assert len(temps) == 1  # hidden, not *.parquet: readers and resume skip it
    assert len(resume.done_keys(str(out), "m", "m1")) == 10
    assert pads.dataset(str(out)).count_rows() == 10
    # the process dies here (no close); the next run cleans the leftover up
    assert resume.clean_stale_staging(str(out)) == 1
    assert not list(out.glob(".part-*"))
    writer.abort()


def test_schema_mismatch_is_refused(tmp_path):
    out = str(tmp_path / "labels")
    w = PartWriter(out, SCHEMA, "run1", SinkConfig())
    w.write(rows(3))
    w.close()
    resume.check_schema(out, SCHEMA)  # same: fine
    with pytest.raises(resume.ResumeError, match="embedding"):
        resume.check_schema(out, output_schema(8, "float16"))
    with pytest.raises(resume.ResumeError, match="embedding"):
        resume.check_schema(out, output_schema(16))


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(resume.ResumeError, match="not a directory"):
        resume.done_keys(str(tmp_path / "f"), "m", "m1")


@pytest.mark.parametrize("field", ["max_rows", "max_bytes", "max_seconds", "row_group_rows"])
def test_sink_settings_are_validated(field):
    with pytest.raises(LabelError, match=">= 1"):
        SinkConfig(**{field: 0})
