"""Part files (rolled, published whole), resume keys, and the model stage's output rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline import resume
from pipeline.decode import VideoMeta
from pipeline.inference import MODEL_ERROR, ClipClassifier, InferenceConfig
from pipeline.preprocess import ClipResult, PreprocessConfig, results_to_batch
from pipeline.schema import COLUMNS, error_rows, output_schema
from pipeline.sink import PartWriter, SinkConfig

SCHEMA = output_schema(8)


def rows(n: int, start: int = 0, version: str = "m1") -> pa.Table:
    return error_rows(
        SCHEMA, [(f"s3://b/v{i}.mp4", f"e{i}", "corrupt", "bad") for i in range(start, start + n)],
        model_name="m", model_version=version, run_id="run1",
    )


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
    assert len(writer.parts) == 3 and writer.rows_committed == 25
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
        assert table.num_rows == 25 and table.column_names == list(COLUMNS)
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), 8)
        # row groups gather incoming batches (5 rows each here) up to row_group_rows
        assert pq.ParquetFile(writer.parts[0]).metadata.num_row_groups == 2


def test_killed_writer_leaves_only_committed_parts_and_temp_is_cleaned(tmp_path):
    out = tmp_path / "labels"
    writer = PartWriter(str(out), SCHEMA, "run1", SinkConfig(max_rows=10, row_group_rows=2))
    writer.write(rows(10))  # one part committed
    writer.write(rows(2, 10))  # 2 rows in an open temp file
    temps = list(out.glob(".part-*.parquet.tmp"))
    assert len(temps) == 1  # hidden, not *.parquet: readers and resume skip it
    assert len(resume.done_keys(str(out), "m", "m1")) == 10
    assert pads.dataset(str(out)).count_rows() == 10
    # the process dies here (no close); the next run cleans the leftover up
    assert resume.clean_stale_temp(str(out)) == 1
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


# ---------------------------------------------------------------- the model stage
def _batch(n_ok: int, n_err: int, t: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    results = [
        ClipResult(f"v{i}.mp4", f"e{i}", clip=rng.integers(0, 255, (t, 3, 32, 32), np.uint8),
                   indices=np.arange(1, 2 * t, 2, dtype=np.int32),
                   meta=VideoMeta(num_frames=9, fps=25.0, duration_s=0.36, width=64, height=48))
        for i in range(n_ok)
    ] + [ClipResult(f"bad{i}.mp4", "x", error_kind="corrupt", error_message="nope")
         for i in range(n_err)]
    cfg = PreprocessConfig(num_segments=t, resize_size=40, crop_size=32)
    return results_to_batch(results, cfg)


def _classifier(tiny_model, **kw) -> ClipClassifier:
    return ClipClassifier(InferenceConfig(
        model_path=str(tiny_model), model_name="tiny", model_version="7", run_id="r1",
        num_segments=4, top_k=3, torch_threads=1, **kw,
    ))


def test_model_stage_labels_ok_rows_and_passes_errors_through(tiny_model):
    import torch

    import tsm_model
    from pipeline.transforms import normalize

    clf = _classifier(tiny_model)
    batch = _batch(3, 2)
    table = clf(batch)
    assert table.schema == clf.schema and table.num_rows == 5
    rows_ = table.to_pylist()
    assert [r["status"] for r in rows_] == ["ok"] * 3 + ["error"] * 2
    assert rows_[3]["error_kind"] == "corrupt" and rows_[3]["top_k_labels"] is None
    assert np.isnan(rows_[3]["embedding"]).all() and rows_[3]["frame_indices"] is None
    ok = rows_[0]
    assert (ok["model_name"], ok["model_version"], ok["run_id"]) == ("tiny", "7", "r1")
    assert ok["frame_indices"] == [1, 3, 5, 7] and ok["num_frames"] == 9
    # the scores are the model's own softmax, in order, with the right names
    model = tsm_model.load(tiny_model, num_segments=4)
    x = normalize(torch.from_numpy(batch["clip"][:3].copy()), model.config.mean, model.config.std)
    with torch.inference_mode():
        probs = torch.softmax(model(x), dim=1).numpy()
        emb = model.features(x).numpy()
    for i in range(3):
        top = np.argsort(-probs[i])[:3]
        assert rows_[i]["top_k_ids"] == top.tolist()
        assert rows_[i]["top_k_labels"] == [model.config.class_names[j] for j in top]
        np.testing.assert_allclose(rows_[i]["top_k_scores"], probs[i][top], rtol=1e-5)
        np.testing.assert_allclose(rows_[i]["embedding"], emb[i], rtol=1e-4, atol=1e-5)


def test_embeddings_off_and_float16(tiny_model):
    t = _classifier(tiny_model, embeddings=False)(_batch(2, 0))
    assert all(np.isnan(e).all() for e in t["embedding"].to_pylist())
    t16 = _classifier(tiny_model, embedding_dtype="float16")(_batch(2, 0))
    assert t16.schema.field("embedding").type == pa.list_(pa.float16(), 1280)


def test_a_model_failure_becomes_error_rows_without_losing_any(tiny_model):
    # clips of 3 frames for a model loaded for 4 make the forward pass fail for every clip
    table = _classifier(tiny_model)(_batch(2, 1, t=3))
    rows_ = table.to_pylist()
    assert [r["video_uri"] for r in rows_] == ["v0.mp4", "v1.mp4", "bad0.mp4"]
    assert [r["error_kind"] for r in rows_] == [MODEL_ERROR, MODEL_ERROR, "corrupt"]
    assert "model failed" in rows_[0]["error_message"]
    assert rows_[0]["num_frames"] == 9  # what was decoded is still recorded


def test_model_files_shipped_as_bytes_need_no_model_path(tiny_model, tmp_path):
    from pipeline.label_job import read_model_files

    files = read_model_files(tiny_model)
    assert sorted(files) == ["config.json", "model.safetensors"]
    shipped = ClipClassifier(InferenceConfig(
        model_path=str(tmp_path / "not-on-this-node"), model_name="tiny", model_version="7",
        run_id="r1", num_segments=4, top_k=3, torch_threads=1, model_files=files,
    ))
    batch = _batch(2, 0)
    assert shipped(batch)["top_k_ids"].to_pylist() == _classifier(tiny_model)(batch)[
        "top_k_ids"].to_pylist()
