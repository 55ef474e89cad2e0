"""Parts written by the workers (published whole, named by content) and the output table."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.contract import COLUMN_NAMES, RunStamp, build_rows, output_schema
from pipeline.errors import LabelError
from pipeline.keys import hash_keys
from pipeline.sink import PartSpec, SinkConfig, part_name, write_part
from pipeline.table import OutputError, OutputTable

SCHEMA = output_schema(8)


def rows(n: int, start: int = 0, kind: str | None = "corrupt", sampling: str = "uniform",
         version_of=lambda i: f"e{i}") -> pa.Table:
    uris = [f"s3://b/v{i}.mp4" for i in range(start, start + n)]
    return build_rows(SCHEMA, RunStamp("m", "1", "run1", sampling, 8), video_uri=uris,
                      source_version=[version_of(i) for i in range(start, start + n)],
                      error_kind=[kind] * n, error_message=["bad"] * n)


def spec_for(table: OutputTable, schema=SCHEMA, lease_id: str = "lease-1",
             run_id: str = "run1") -> PartSpec:
    return PartSpec(table.root, table.partition, run_id, lease_id, schema, row_group_rows=4,
                    compression="zstd")


def write(table: OutputTable, batch: pa.Table) -> dict:
    return write_part(batch, spec_for(table)).to_pylist()[0]


@pytest.fixture(params=["local", "s3"])
def table(request, tmp_path):
    if request.param == "s3":
        root = f"s3://{request.getfixturevalue('bucket')}/labels/"
    else:
        root = str(tmp_path / "labels")
    t = OutputTable(root, "tsm model", "3")
    with t.store.lease(root, "lease-1"):  # writers publish only under their run's lease
        yield t


def test_a_part_is_published_whole_and_summarised(table):
    summary = write(table, pa.concat_tables([rows(2, kind=None), rows(3, start=2)]))
    assert (summary["rows"], summary["ok"], json.loads(summary["errors"])) == (
        5, 2, {"corrupt": 3})
    (part,) = table.parts()
    assert part.uri.endswith(summary["part"]) and "/tsm%20model/3/" in part.uri
    with table.store.open_input(part.uri) as f:
        got = pq.read_table(f)
    assert got.num_rows == 5 and got.column_names == list(COLUMN_NAMES)
    assert pq.ParquetFile(table.store.open_input(part.uri)).metadata.num_row_groups == 2


def test_the_same_rows_make_the_same_part_so_a_retried_task_does_not_duplicate(table):
    batch = rows(4)
    first, again = write(table, batch), write(table, batch)
    assert first["part"] == again["part"] and len(table.parts()) == 1
    assert write(table, rows(4, start=4))["part"] != first["part"]
    assert part_name("r", ["a", "b"]) != part_name("r", ["b", "a"])


def test_done_keys_are_final_verdicts_for_these_settings(table):
    write(table, rows(2, start=0, kind=None))  # labelled: done
    write(table, rows(2, start=2, kind="corrupt"))  # the video's own fault: done
    write(table, rows(2, start=4, kind="read_error"))  # the store's: tried again
    write(table, rows(2, start=6, kind=None, sampling="keyframe"))  # other settings
    done = table.done("uniform", 8)
    keys = hash_keys([f"s3://b/v{i}.mp4" for i in range(8)], [f"e{i}" for i in range(8)])
    assert done.known(keys).tolist() == [True] * 4 + [False] * 4
    assert table.done("uniform", 4).known(keys).tolist() == [False] * 8
    # a new version of the object is a new input
    assert not table.done("uniform", 8).known(hash_keys(["s3://b/v0.mp4"], ["e0-new"]))[0]


def test_a_video_that_keeps_crashing_the_decoder_stops_being_retried(table):
    from pipeline.table import RETRY_BUDGET

    key = hash_keys(["s3://b/v0.mp4"], ["e0"])
    for attempt in range(RETRY_BUDGET):
        assert not table.done("uniform", 8).known(key)[0], attempt
        # each run writes its own part (its run id is in the part's name)
        write_part(rows(1, kind="decoder_crash"), spec_for(table, run_id=f"run{attempt}"))
    assert table.done("uniform", 8).known(key)[0]


def test_schema_check_reads_every_part(table):
    write(table, rows(2))
    other = output_schema(8, "float16")
    write_part(rows(2, start=5).cast(other), spec_for(table, other))  # another schema
    with pytest.raises(OutputError, match="embedding"):
        table.check_schema(SCHEMA)


def test_a_writer_whose_run_lost_the_lease_publishes_nothing(table):
    assert write(table, rows(2))["rows"] == 2
    fenced = write_part(rows(2, start=2), spec_for(table, lease_id="lease-of-a-dead-run"))
    summary = fenced.to_pylist()[0]
    assert (summary["part"], summary["rows"], summary["ok"]) == ("", 0, 0)
    assert len(table.parts()) == 1


def test_staging_leftovers_are_cleaned_and_never_read(tmp_path):
    table = OutputTable(str(tmp_path / "labels"), "m", "1")
    with table.store.lease(table.root, "lease-1"):
        write(table, rows(2))
    staged = table.store.staging_path(table.store.join(table.partition, "part-x-1.parquet"))
    staged.write_bytes(b"half a parquet file")  # what a killed writer leaves
    assert len(table.parts()) == 1 and pads.dataset(table.partition).count_rows() == 2
    assert oct(staged.stat().st_mode & 0o777) == "0o644"  # readable by the other users
    assert table.clean_staging() == 1 and not staged.exists()


def test_run_records_and_an_output_that_is_a_file(tmp_path):
    table = OutputTable(str(tmp_path / "labels"), "m", "1")
    assert table.runs() == []
    table.write_run("r1", {"run_id": "r1", "finished_at": "2026-01-01T00:00:00"})
    table.write_run("r2", {"run_id": "r2", "finished_at": "2026-01-02T00:00:00"})
    assert [r["run_id"] for r in table.runs()] == ["r1", "r2"]
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        OutputTable(str(tmp_path / "f"), "m", "1").check_root()


def test_part_size_follows_rows_and_bytes():
    assert SinkConfig(max_rows=100).rows_per_part(embedding_bytes=4 * 512) == 100
    assert SinkConfig(max_bytes=1 << 20).rows_per_part(embedding_bytes=8192 - 512) == 128


@pytest.mark.parametrize("field", ["max_rows", "max_bytes", "row_group_rows"])
def test_sink_settings_are_validated(field):
    with pytest.raises(LabelError, match=">= 1"):
        SinkConfig(**{field: 0})
