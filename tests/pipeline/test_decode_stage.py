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
from pipeline.decode_stage import DecodeSpec, decode_batch, decode_bounded
from pipeline.listing import INPUT_SCHEMA
from pipeline.store import ObjectInfo, store_for
from pipeline.store.s3 import s3_client

SPEC = DecodeSpec(num_segments=4, resize_size=40, input_size=32, timeout_s=30,
                  stream_threshold_bytes=64 << 20)


def obj(path) -> ObjectInfo:
    return store_for(str(path)).stat(str(path))


def test_good_video_gives_a_cropped_uint8_clip(video_corpus):
    r = decode_bounded(obj(video_corpus["odd"]), SPEC)
    assert r.ok and r.clip.shape == (4, 3, 32, 32) and r.clip.dtype == np.uint8
    assert r.video["frame_indices"] == [3, 11, 18, 26]
    assert (r.video["width"], r.video["height"], r.video["num_frames"]) == (317, 239, 30)
    assert set(r.video) == {c.name for c in VIDEO_COLUMNS}  # every measured column, no other


def test_every_bad_input_is_one_error_result(video_corpus, tmp_path):
    for name, kind in BROKEN.items():
        r = decode_bounded(obj(video_corpus[name]), SPEC)
        assert (r.ok, r.error_kind) == (False, kind), name
        assert r.error_message and r.video is None
    gone = decode_bounded(ObjectInfo(str(tmp_path / "gone.mp4"), -1, ""), SPEC)
    assert gone.error_kind == ErrorKind.MISSING
    (tmp_path / "dir.mp4").mkdir()
    d = decode_bounded(ObjectInfo(str(tmp_path / "dir.mp4"), 0, "x"), SPEC)
    assert d.error_kind == ErrorKind.READ_ERROR


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
    clips = out["clip"].combine_chunks().to_numpy()
    assert clips.shape == (3, 4, 3, 32, 32) and clips.dtype == np.uint8
    assert not clips[1].any() and clips[0].any()
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
    # threshold None: the whole-object GET hangs; 0: the ranged stream hangs inside
    # decord's reading of it, while the decoder's stderr is being captured
    spec = DecodeSpec(num_segments=4, resize_size=40, input_size=32, timeout_s=1.0,
                      stream_threshold_bytes=threshold if threshold is not None else 1 << 30)
    r = decode_bounded(ObjectInfo("s3://stalled/v.mp4", 5000, "etag"), spec)
    assert (r.ok, r.error_kind) == (False, ErrorKind.TIMEOUT)
    assert "1 s" in r.error_message
    capfd.readouterr()
    os.write(2, b"console works\n")
    assert capfd.readouterr().err == "console works\n"
