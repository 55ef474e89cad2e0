"""The CPU stage: one result per input, error kinds, and a time limit on hung reads/decodes."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pyarrow as pa
import pytest
from conftest import BROKEN

from pipeline.contract import VIDEO_COLUMNS, ErrorKind
from pipeline.decode_stage import DecodeSpec, decode_batch, decode_bounded, read_clips
from pipeline.fetch_decode import FetchDecode
from pipeline.listing import INPUT_SCHEMA
from pipeline.store import ObjectInfo, store_for
from pipeline.store.s3 import s3_client


def spec(threshold_mb: float = 16, timeout_s: float = 60, mode: str = "uniform",
         max_pixels: int = 3840 * 2160) -> DecodeSpec:
    job = FetchDecode(num_segments=4, sampling=mode, max_frame_pixels=max_pixels,
                      whole_below=int(threshold_mb * 1024 * 1024))
    return DecodeSpec(job, resize_size=40, input_size=32, timeout_s=timeout_s)


SPEC = spec()


def obj(path) -> ObjectInfo:
    return store_for(str(path)).stat(str(path))


def test_good_video_gives_a_cropped_uint8_clip(video_corpus):
    r = decode_bounded(obj(video_corpus["odd"]), SPEC)
    assert r.ok and r.clip.shape == (4, 3, 32, 32) and r.clip.dtype == np.uint8
    assert r.video["frame_indices"] == [3, 11, 18, 26]
    assert (r.video["width"], r.video["height"], r.video["num_frames"]) == (317, 239, 30)
    assert set(r.video) == {c.name for c in VIDEO_COLUMNS}  # every measured column, no other
    assert r.video["decoder"] == "cpu" and r.video["frames_decoded"] >= 4
    assert r.video["bytes_read"] > 0 and r.video["decode_cpu_s"] > 0


def test_every_bad_input_is_one_error_result(video_corpus, tmp_path):
    for name, kind in BROKEN.items():
        r = decode_bounded(obj(video_corpus[name]), SPEC)
        assert (r.ok, r.error_kind) == (False, kind), name
        assert r.error_message
        # what reading cost is kept; no measurement of a video that was not decoded
        assert "frame_indices" not in (r.video or {}) and "num_frames" not in (r.video or {})
    gone = decode_bounded(ObjectInfo(str(tmp_path / "gone.mp4"), -1, ""), SPEC)
    assert gone.error_kind == ErrorKind.MISSING
    (tmp_path / "dir.mp4").mkdir()
    d = decode_bounded(ObjectInfo(str(tmp_path / "dir.mp4"), 0, "x"), SPEC)
    assert d.error_kind == ErrorKind.NOT_A_FILE


def test_batch_has_one_row_per_input_with_nulls_for_errors(video_corpus):
    paths = [video_corpus["h264"], video_corpus["text.mp4"], video_corpus["vp9"]]
    infos = [obj(p) for p in paths]
    batch = pa.table({"uri": [o.uri for o in infos] + ["/gone.mp4"],
                      "version": [o.version for o in infos] + [""],
                      "size": [o.size for o in infos] + [-1],
                      "error_kind": [None, None, None, "missing"],
                      "error_message": [None, None, None, "not there at listing"]},
                     schema=INPUT_SCHEMA)
    out = decode_batch(batch, SPEC).slice(0, 3)
    assert decode_batch(batch, SPEC)["error_message"].to_pylist()[3] == "not there at listing"
    assert out["video_uri"].to_pylist() == [str(p) for p in paths]
    assert out["error_kind"].to_pylist() == [None, "corrupt", None]
    rows, clips = read_clips(out["clip"], (4, 3, 32, 32))
    assert rows.tolist() == [0, 2] and clips.dtype == np.uint8 and clips.any()
    assert out["clip"].null_count == 1 and out["encoded"].null_count == 3  # no DALI here
    assert out["frame_indices"].to_pylist()[1] is None
    assert out["num_frames"].to_pylist() == [40, None, 40]
    assert out.schema.field("num_frames").type == pa.int64()  # the contract's types


@pytest.fixture
def black_hole(monkeypatch):
    """An S3 endpoint that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    conns = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, os.environ.get(k, v))
    s3_client.cache_clear()
    yield
    s3_client.cache_clear()
    stop.set()
    t.join()
    for c in conns:
        c.close()
    server.close()


@pytest.mark.parametrize("threshold", [None, 0])
def test_a_hung_read_or_decode_times_out_and_the_console_comes_back(black_hole, capfd, threshold):
    # threshold None: the whole-object GET hangs; 0: a ranged GET hangs inside the
    # decoder's reading of it
    one = spec(threshold_mb=(threshold if threshold is not None else 1 << 30) / 1024 / 1024,
               timeout_s=1.0)
    r = decode_bounded(ObjectInfo("s3://stalled/v.mp4", 5000, "etag"), one)
    assert (r.ok, r.error_kind) == (False, ErrorKind.TIMEOUT)
    assert "1 s" in r.error_message
    capfd.readouterr()
    os.write(2, b"console works\n")
    assert capfd.readouterr().err == "console works\n"


def test_frames_over_the_limit_are_refused_before_decoding(video_corpus):
    r = decode_bounded(obj(video_corpus["odd"]), spec(max_pixels=100 * 100))
    assert r.error_kind == ErrorKind.TOO_LARGE and "317x239" in r.error_message
    assert ErrorKind.TOO_LARGE.final  # the same file would be refused again: not retried


def test_a_decode_task_declares_the_memory_its_limits_allow():
    small, large = spec(max_pixels=1920 * 1080), spec(max_pixels=7680 * 4320)
    assert small.memory_bytes < large.memory_bytes
    assert large.memory_bytes - small.memory_bytes == 48 * (7680 * 4320 - 1920 * 1080)


def test_with_a_gpu_decoder_what_dali_takes_is_shipped_encoded(video_corpus, monkeypatch):
    """The decode task probes, samples and routes: a VP9 file goes on whole with its frame
    indices (DALI's CPU backend decodes VP9), H.264 is decoded here, and so is a file whose
    packets fall short of its frame count (DALI would return stale frames for the rest)."""
    import dataclasses

    from pipeline.decoders import pyav
    from pipeline.fetch_decode import fetch_decode

    job = dataclasses.replace(SPEC.job, gpu_backend="dali-cpu")
    vp9 = obj(video_corpus["vp9"])
    shipped = fetch_decode(vp9, job)
    assert shipped.frames is None and shipped.encoded == video_corpus["vp9"].read_bytes()
    cpu = fetch_decode(vp9, SPEC.job)
    assert shipped.video["frame_indices"] == cpu.video["frame_indices"]
    assert shipped.video["num_frames"] == cpu.video["num_frames"] == 40
    assert (shipped.video["decoder"], cpu.video["decoder"]) == ("dali", "cpu")
    assert shipped.video["frames_decoded"] == max(shipped.video["frame_indices"]) + 1
    h264 = fetch_decode(obj(video_corpus["h264"]), job)
    assert h264.encoded is None and h264.frames is not None and h264.video["decoder"] == "cpu"
    monkeypatch.setattr(pyav, "count_packets", lambda source: 20)  # 40 frames promised
    short = fetch_decode(vp9, job)
    assert short.encoded is None and short.frames is not None
    monkeypatch.undo()
    # DALI decodes from the first frame: a sample that reaches too far is cheaper here
    far = fetch_decode(vp9, dataclasses.replace(job, max_gpu_decode_frames=10))
    assert far.encoded is None and far.frames is not None


def test_a_file_the_job_may_not_read_is_a_read_error_a_rerun_retries(video_corpus, monkeypatch):
    """Permission denied is the store's answer, not the video's fault: `read_error`, which is
    retryable, never `corrupt` (a rerun after the permission is fixed labels the video). Root
    reads any file, so the refusal is made by the store here."""
    from pipeline.contract import ErrorKind
    from pipeline.fetch_decode import fetch_decode
    from pipeline.store.local import LocalStore

    def refused(self, obj, whole_below):
        raise PermissionError(13, "Permission denied", obj.uri)

    monkeypatch.setattr(LocalStore, "open_video", refused)
    decoded = fetch_decode(obj(video_corpus["h264"]), SPEC.job)
    assert decoded.error_kind == ErrorKind.READ_ERROR and not ErrorKind.READ_ERROR.final
    assert "Permission denied" in decoded.error_message
