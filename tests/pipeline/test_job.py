"""The label job end to end on a real local Ray: rows, errors, S3, manifests, resume, MLflow."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from conftest import BROKEN, GOOD, output_parts, output_rows, upload_dir

from pipeline.errors import LabelError
from pipeline.job import run_label
from pipeline.settings import LabelConfig
from pipeline.sink import SinkConfig
from pipeline.store import store_for

pytestmark = pytest.mark.usefixtures("ray_cluster", "mlflow_store")


def read_output(output: str) -> pa.Table:
    """Every committed row under a local or S3 output."""
    return output_rows(output)


def _all_cpus_free(wait_s: float = 20.0) -> bool:
    """Whether every CPU of the test's Ray is free again (no task or actor of a run holds
    one), waiting up to `wait_s` for them."""
    import ray

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources()["CPU"]:
            return True
        time.sleep(0.5)
    return False


def by_name(table: pa.Table) -> dict[str, dict]:
    return {Path(r["video_uri"]).name: r for r in table.to_pylist()}


@pytest.fixture(scope="module")
def corpus_dir(video_corpus, tmp_path_factory) -> Path:
    """Every test video, good and broken, in one flat directory."""
    d = tmp_path_factory.mktemp("corpus")
    for path in video_corpus.values():
        shutil.copy(path, d / path.name)
    return d


@pytest.fixture(scope="module")
def local_run(corpus_dir, tiny_model, tmp_path_factory, mlflow_store, ray_cluster):
    out = tmp_path_factory.mktemp("out") / "labels"
    config = LabelConfig(input=str(corpus_dir), output=str(out), model=str(tiny_model),
                         top_k=2, sink=SinkConfig(max_rows=5))
    summary = run_label(config)
    return config, summary, read_output(str(out))


def test_one_row_per_video_with_the_right_error_kinds(local_run, corpus_dir):
    config, summary, table = local_run
    rows = by_name(table)
    names = sorted(p.name for p in corpus_dir.iterdir())
    assert sorted(rows) == names and table.num_rows == len(names)
    for name, kind in BROKEN.items():
        assert (rows[name]["status"], rows[name]["error_kind"]) == ("error", kind), name
        assert rows[name]["error_message"]
    good = [n for n in names if n not in BROKEN]
    assert len(good) == len(GOOD)
    for name in good:
        r = rows[name]
        assert (r["status"], r["error_kind"]) == ("ok", None), (name, r["error_message"])
        assert len(r["top_k_labels"]) == 2 and len(r["top_k_scores"]) == 2
        assert r["top_k_labels"][0] in ("archery", "bowling", "cycling", "diving")
        assert r["top_k_scores"][0] >= r["top_k_scores"][1] > 0
        assert len(r["embedding"]) == 1280 and np.isfinite(r["embedding"]).all()
        assert len(r["frame_indices"]) == 4 and r["width"] > 0 and r["fps"] > 0
    assert rows["odd.mp4"]["width"] == 317
    assert summary.ok == len(good) and sum(summary.errors.values()) == len(BROKEN)
    assert summary.errors["corrupt"] == 3
    # 14 rows at most 5 a part (Ray Data hands the writers 5 rows or a few more at a time: a
    # bundle of 6 is a part of 5 and one of 1)
    part_rows = [pq.ParquetFile(p).metadata.num_rows for p in summary.parts]
    assert sum(part_rows) == 14 and max(part_rows) <= 5 and len(part_rows) >= 3
    # one folder per model version, plain Parquet: readable as one dataset
    assert Path(summary.output) == Path(config.output) / "tiny-tsm" / summary.model_version
    ds = pads.dataset(str(Path(summary.output)))  # skips _runs/ and .lock by their prefix
    assert ds.count_rows() == table.num_rows
    assert ds.schema.field("processed_at").type == pa.timestamp("us", tz="UTC")
    assert set(table["run_id"].to_pylist()) == {summary.run_id}
    assert set(table["model_version"].to_pylist()) == {summary.model_version}


GOLDEN = Path(__file__).parents[1] / "data" / "label_rows_golden.json"
EXACT = ("status", "error_kind", "model_name", "model_version", "top_k_labels", "top_k_ids",
         "num_frames", "width", "height", "frame_indices")


def test_rows_are_the_same_as_before_the_renovation(local_run, corpus_dir):
    # the golden rows were written by the job as it was before the renovation (issue 8),
    # on the same test videos and model: apart from run ids and times, nothing changed
    golden = json.loads(GOLDEN.read_text())
    rows = by_name(local_run[2])
    assert sorted(rows) == sorted(golden)
    for name, want in golden.items():
        got = rows[name]
        for col in EXACT:
            assert got[col] == want[col], (name, col)
        message = got["error_message"] and got["error_message"].replace(str(corpus_dir),
                                                                        "<corpus>")
        if want["error_message"] is None:
            assert message is None
        elif want["error_kind"] in ("truncated", "corrupt"):
            # the decoder's own words: the kind is compared exactly above; the wording
            # changed with the decoder (PyAV since issue 10: a cut-off MP4 is now found
            # from its index, before decoding), and FFmpeg's lines vary from run to run
            assert message, name
        else:
            assert message == want["error_message"], name
        for col in ("fps", "duration_s", "top_k_scores"):
            assert got[col] == (pytest.approx(want[col], rel=1e-5) if want[col] else want[col])
        head = np.asarray(got["embedding"][:32], dtype=np.float64)
        if want["embedding_sum"] is None:
            assert np.isnan(head).all()
        else:
            np.testing.assert_allclose(head, want["embedding_head"], rtol=1e-4)


def test_the_run_is_recorded_in_mlflow(local_run):
    from mlflow import MlflowClient

    config, summary, _ = local_run
    run = MlflowClient().get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    p, m = run.data.params, run.data.metrics
    assert (p["input"], p["output"], p["model_uri"]) == (config.input, config.output, config.model)
    assert (p["model_version"], p["num_segments"], p["top_k"]) == (
        summary.model_version, "4", "2")
    assert run.data.tags["output"] == config.output
    assert m["videos_ok"] == summary.ok and m["errors_corrupt"] == 3
    assert m["errors_no_video_stream"] == 1 and m["skipped"] == 0
    assert m["videos_per_s"] > 0 and m["wall_time_s"] > 0


def test_a_finished_run_leaves_its_record_last(local_run):
    from pipeline.table import OutputTable

    config, summary, table = local_run
    records = OutputTable(config.output, "tiny-tsm", summary.model_version).runs()
    record = next(r for r in records if r["run_id"] == summary.run_id)
    assert sorted(record["parts"]) == sorted(p.rsplit("/", 1)[-1] for p in summary.parts)
    assert record["counts"]["ok"] == summary.ok and record["counts"]["listed"] == 14
    assert record["settings"] == {"sampling": "uniform", "num_segments": 4, "top_k": 2,
                                  "embeddings": True, "embedding_dtype": "float32"}
    assert set(table["sampling"].to_pylist()) == {"uniform"}
    assert set(table["num_segments"].to_pylist()) == {4}


def test_rerun_skips_everything_and_writes_nothing(local_run):
    config, first, table = local_run
    again = run_label(config)
    assert again.skipped == first.listed and again.processed == 0 and again.parts == []
    assert read_output(config.output).num_rows == table.num_rows


def test_s3_input_and_output_give_the_same_rows_as_local(local_run, corpus_dir, bucket):
    config, _, local = local_run
    prefix = upload_dir(corpus_dir, bucket, "videos")
    out = f"s3://{bucket}/labels/"
    # a 0 MB whole-read limit sends every object through ranged GETs of what is decoded
    summary = run_label(LabelConfig(input=prefix, output=out, model=config.model, top_k=2,
                                    whole_read_mb=0))
    remote = by_name(read_output(out))
    assert summary.parts and all(p.startswith(out) for p in summary.parts)
    local_rows = by_name(local)
    assert sorted(remote) == sorted(local_rows)
    for name, r in remote.items():
        l_ = local_rows[name]
        assert r["video_uri"] == f"{prefix}{name}"
        assert r["source_version"] == store_for(prefix).stat(r["video_uri"]).version  # the ETag
        for col in ("status", "error_kind", "top_k_ids", "top_k_labels", "frame_indices",
                    "num_frames", "width", "height"):
            assert r[col] == l_[col], (name, col)
        if r["status"] == "ok":
            np.testing.assert_allclose(r["embedding"], l_["embedding"], rtol=1e-5, atol=1e-6)


def test_manifest_with_duplicates_and_a_missing_video(corpus_dir, tiny_model, tmp_path):
    manifest = tmp_path / "todo.jsonl"
    uris = [str(corpus_dir / "h264.mp4"), str(corpus_dir / "vp9.webm"),
            str(corpus_dir / "h264.mp4"), str(tmp_path / "gone.mp4")]
    manifest.write_text("".join(json.dumps({"uri": u}) + "\n" for u in uris))
    out = tmp_path / "labels"
    summary = run_label(LabelConfig(input=str(manifest), output=str(out), model=str(tiny_model),
                                    embeddings=False))
    rows = by_name(read_output(str(out)))
    assert sorted(rows) == ["gone.mp4", "h264.mp4", "vp9.webm"]
    assert rows["gone.mp4"]["error_kind"] == "missing"
    assert np.isnan(rows["h264.mp4"]["embedding"]).all()  # --no-embeddings
    assert summary.duplicates == 1 and summary.ok == 2 and summary.errors == {"missing": 1}


def test_bad_settings_fail_before_anything_runs(tiny_model, corpus_dir, tmp_path):
    def run(**kw):
        base = dict(input=str(corpus_dir), output=str(tmp_path / "o"), model=str(tiny_model))
        return run_label(LabelConfig(**{**base, **kw}))

    for changes, needle in [
        ({"num_segments": 0}, "segments must be >= 1"),
        ({"embedding_dtype": "int8"}, "float32 or float16"),
        ({"model": str(tmp_path / "no-model")}, "model directory not found"),
        ({"model": "models:/nope@champion"}, "nope"),
        ({"input": str(tmp_path / "nothing")}, "input not found"),
        ({"gpus_per_actor": 1}, "GPUs"),
        ({"decode_timeout_s": float("inf")}, "decode timeout must be in"),
        ({"whole_read_mb": float("nan")}, "whole read must be in"),
        ({"whole_read_mb": 1e9}, "whole read must be in"),
        ({"sampling": "random"}, "sampling must be one of uniform, keyframe"),
        ({"max_frame_pixels": 10}, "max frame pixels must be in"),
        ({"sink": SinkConfig(max_rows=1)} | {"batch_size": 0}, "batch size must be >= 1"),
    ]:
        with pytest.raises(LabelError, match=needle):
            run(**changes)
    assert not (tmp_path / "o").exists()


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pipeline.job import run_label
    from pipeline.settings import LabelConfig
    from pipeline.sink import SinkConfig
    run_label(LabelConfig(input=sys.argv[1], output=sys.argv[2], model=sys.argv[3],
                          batch_size=2, videos_per_decode_task=1,
                          sink=SinkConfig(max_rows=3, row_group_rows=1)))
""")


def test_resume_after_a_kill_writes_every_video_exactly_once(
    video_corpus, tiny_model, tmp_path, ray_cluster
):
    videos_dir = tmp_path / "many"
    videos_dir.mkdir()
    n = 150  # enough that decoding outlasts the model actor's start, so the kill lands mid-run
    for i in range(n):
        shutil.copy(video_corpus["h264"], videos_dir / f"v{i:03d}.mp4")
    out = tmp_path / "labels"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(videos_dir), str(out), str(tiny_model)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path.cwd(),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if list(out.rglob("part-*.parquet")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the first run finished or died before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = read_output(str(out))
    assert 0 < first.num_rows < n
    # a partial part file the kill may have left, plus one planted: both ignored and removed
    partition = next(out.rglob("part-*.parquet")).parent
    (partition / ".part-planted.parquet.tmp").write_bytes(b"half a parquet file")

    summary = run_label(LabelConfig(input=str(videos_dir), output=str(out),
                                    model=str(tiny_model)))
    # a part the killed run's last task was writing may land after the kill (it still held
    # the output then); the rerun counts it as done, and writes the rest
    assert summary.skipped >= first.num_rows
    assert summary.skipped + summary.processed == n
    union = read_output(str(out))
    uris = union["video_uri"].to_pylist()
    assert sorted(uris) == sorted(str(videos_dir / f"v{i:03d}.mp4") for i in range(n))
    assert len(set(uris)) == len(uris) == n
    assert not list(out.rglob(".part-*"))


def test_a_job_that_stops_making_progress_ends_and_resumes(corpus_dir, tiny_model, tmp_path):
    # a limit no real stream meets (Ray must start the actors first) stands in for an
    # actor that crashes on every retry: the job ends with a clear error, not a hang
    from mlflow import MlflowClient

    from pipeline.settings import EXPERIMENT
    from pipeline.stall import JobStalled

    out = tmp_path / "labels"
    config = LabelConfig(input=str(corpus_dir), output=str(out), model=str(tiny_model),
                         stall_timeout_s=0.01)
    started = time.monotonic()
    with pytest.raises(JobStalled, match=r"no video finished for 0\.01 s.*rerun to resume"):
        run_label(config)
    assert time.monotonic() - started < 60
    assert output_parts(str(out)) == []
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    last = client.search_runs([exp.experiment_id], order_by=["start_time DESC"],
                              max_results=1)[0]
    assert last.info.status == "FAILED"
    # the rerun, with the default limit, labels every video exactly once
    summary = run_label(LabelConfig(input=str(corpus_dir), output=str(out),
                                    model=str(tiny_model)))
    table = read_output(str(out))
    assert summary.processed == summary.listed == table.num_rows
    assert len(set(table["video_uri"].to_pylist())) == table.num_rows


def test_manifest_ids_are_carried_and_limit_takes_a_few(corpus_dir, tiny_model, tmp_path):
    manifest = tmp_path / "m.csv"
    names = ["h264.mp4", "vp9.webm", "hevc.mp4"]
    manifest.write_text("uri,video_id,content_id,label\n" + "".join(
        f"{corpus_dir / n},{i:05d},c-{i},x\n" for i, n in enumerate(names)))
    out = str(tmp_path / "labels")
    config = LabelConfig(input=str(manifest), output=out, model=str(tiny_model),
                         keep_columns=("video_id", "content_id"), limit=2)
    first = run_label(config)
    assert first.processed == 2
    rerun = run_label(LabelConfig(**{**config.__dict__, "limit": None}))
    assert (rerun.skipped, rerun.processed) == (2, 1)
    rows = by_name(read_output(out))
    assert sorted(rows) == sorted(names)
    for i, n in enumerate(names):
        # ids stay text: "00001", not 1
        assert (rows[n]["video_id"], rows[n]["content_id"]) == (f"{i:05d}", f"c-{i}")
    with pytest.raises(LabelError, match="has no column shop_id"):
        run_label(LabelConfig(**{**config.__dict__, "keep_columns": ("shop_id",)}))
    with pytest.raises(LabelError, match="needs a manifest input"):
        run_label(LabelConfig(**{**config.__dict__, "input": str(corpus_dir)}))
    with pytest.raises(LabelError, match="cannot carry 'status'"):
        LabelConfig(input="i", output="o", model="m", keep_columns=("status",))


def test_a_run_over_its_error_rate_fails_and_is_not_marked_finished(corpus_dir, tiny_model,
                                                                     tmp_path):
    from pipeline.job import ErrorRateExceeded
    from pipeline.table import OutputTable

    out = str(tmp_path / "labels")
    config = LabelConfig(input=str(corpus_dir), output=out, model=str(tiny_model),
                         max_error_rate=0.1)  # 6 of the 14 test videos are broken
    with pytest.raises(ErrorRateExceeded, match=r"6 of 14 videos \(42\.9%\) got error rows"):
        run_label(config)
    assert read_output(out).num_rows == 14  # the rows are kept...
    version = read_output(out)["model_version"][0].as_py()
    assert OutputTable(out, "tiny-tsm", version).runs() == []  # ...no run is marked finished


def test_a_listing_that_fails_midway_ends_the_job_and_a_rerun_resumes(corpus_dir, tiny_model,
                                                                      tmp_path):
    import itertools

    from pipeline.job import run_plan
    from pipeline.listing import ListingError
    from pipeline.plan import plan_label
    from pipeline.table import OutputTable

    out = str(tmp_path / "labels")
    config = LabelConfig(input=str(corpus_dir), output=out, model=str(tiny_model))

    def page_fails():
        raise ListingError("listing failed after 5 inputs: SlowDown; rerun to resume")
        yield

    plan = plan_label(config)
    first = next(plan.inputs()).slice(0, 5)
    plan._chunks = itertools.chain([first], page_fails())  # the second page never comes
    with pytest.raises(ListingError, match="rerun to resume"):
        run_plan(plan)
    # the failed run's stream is shut down: its tasks and model actors no longer hold CPUs
    # the rerun needs (on this 2-CPU Ray, the rerun waited for ever)
    assert _all_cpus_free()
    kept = read_output(out)
    assert kept is None or kept.num_rows <= 5  # only whole parts of what was listed
    assert OutputTable(out, "tiny-tsm", plan.model.version).runs() == []
    # the rerun lists everything and labels the rest (a stall would say it is stuck)
    summary = run_label(dataclasses.replace(config, stall_timeout_s=180))
    uris = read_output(out)["video_uri"].to_pylist()
    assert len(uris) == len(set(uris)) == summary.listed


def test_stopping_a_stream_frees_its_cpus_at_once():
    """A run that ends early (an error, a stall) shuts its stream down: an actor stuck in a
    batch would otherwise hold its CPU until the Dataset is garbage-collected, which the
    thread blocked on the stream prevents (so the next run on the same Ray waited for ever)."""
    import ray.data

    from pipeline.job import stop_execution
    from pipeline.stall import drain

    class Stuck:
        def __call__(self, batch):
            time.sleep(3600)
            return batch

    ds = ray.data.range(4, override_num_blocks=4).map_batches(
        Stuck, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    ticks = []

    def tick():
        ticks.append(1)
        if len(ticks) > 8:
            raise TimeoutError("nothing came")

    with pytest.raises(TimeoutError):
        list(drain(ds.iter_batches(batch_size=None), tick))
    assert not _all_cpus_free(wait_s=2)  # the stuck actor keeps its CPU
    stop_execution(ds)
    assert _all_cpus_free()


def test_decode_tasks_may_run_two_batches_ahead_of_the_driver(corpus_dir, tiny_model, tmp_path,
                                                             monkeypatch):
    """A decode task may hand on two batches of clips before the driver takes any (Ray Data's
    default, two blocks, made decoding wait on a busy driver); files shipped whole to the
    GPU decoders keep the default."""
    import pipeline.job as job
    from pipeline.decode_stage import DecodeSpec
    from tsm_model import load

    seen = []
    real = job.part_writers

    def spy(ds, *args, **kwargs):
        seen.append(ds.context._max_num_blocks_in_streaming_gen_buffer)
        return real(ds, *args, **kwargs)

    monkeypatch.setattr(job, "part_writers", spy)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri\n{corpus_dir / 'h264.mp4'}\n")
    config = LabelConfig(input=str(manifest), output=str(tmp_path / "labels"),
                         model=str(tiny_model), videos_per_decode_task=3)
    assert run_label(config).ok == 1
    assert seen == [6]
    model_config = load(tiny_model).config
    gpu = DecodeSpec.from_settings(model_config, config, gpu_backend="nvdec")
    assert job.blocks_ahead(gpu, 3) == 2
