"""The CPU stage: one result per input, error kinds, and a time limit on hung reads/decodes."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest
from conftest import BROKEN

from pipeline import storage
from pipeline.preprocess import (
    MISSING,
    READ_ERROR,
    TIMEOUT,
    PreprocessConfig,
    preprocess_batch,
    preprocess_bounded,
)
from pipeline.storage import ObjectInfo

CFG = PreprocessConfig(num_segments=4, resize_size=40, crop_size=32, timeout_s=30)


def obj(path) -> ObjectInfo:
    return storage.stat(str(path))


def test_good_video_gives_a_cropped_uint8_clip(video_corpus):
    r = preprocess_bounded(obj(video_corpus["odd"]), CFG)
    assert r.ok and r.clip.shape == (4, 3, 32, 32) and r.clip.dtype == np.uint8
    assert r.indices.tolist() == [3, 11, 18, 26]
    assert (r.meta.width, r.meta.height, r.meta.num_frames) == (317, 239, 30)


def test_every_bad_input_is_one_error_result(video_corpus, tmp_path):
    for name, kind in BROKEN.items():
        r = preprocess_bounded(obj(video_corpus[name]), CFG)
        assert (r.ok, r.error_kind) == (False, kind), name
        assert r.error_message
    gone = preprocess_bounded(ObjectInfo(str(tmp_path / "gone.mp4"), -1, ""), CFG)
    assert gone.error_kind == MISSING
    (tmp_path / "dir.mp4").mkdir()
    d = preprocess_bounded(ObjectInfo(str(tmp_path / "dir.mp4"), 0, "x"), CFG)
    assert d.error_kind == READ_ERROR


def test_batch_has_one_row_per_input_with_placeholders(video_corpus):
    paths = [video_corpus["h264"], video_corpus["text.mp4"], video_corpus["vp9"]]
    infos = [obj(p) for p in paths]
    batch = {
        "uri": np.array([o.uri for o in infos], dtype=object),
        "version": np.array([o.version for o in infos], dtype=object),
        "size": np.array([o.size for o in infos]),
    }
    out = preprocess_batch(batch, CFG)
    assert out["video_uri"].tolist() == [str(p) for p in paths]
    assert out["ok"].tolist() == [True, False, True]
    assert out["error_kind"].tolist() == ["", "corrupt", ""]
    assert out["clip"].shape == (3, 4, 3, 32, 32)
    assert not out["clip"][1].any() and out["frame_indices"][1].tolist() == [-1] * 4
    assert out["num_frames"].tolist() == [40, -1, 40]


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
    storage.s3_client.cache_clear()
    yield
    storage.s3_client.cache_clear()
    stop.set()
    t.join()
    for c in conns:
        c.close()
    server.close()


@pytest.mark.parametrize("threshold", [None, 0])
def test_a_hung_read_or_decode_times_out_and_the_console_comes_back(black_hole, capfd, threshold):
    # threshold None: the whole-object GET hangs; 0: the ranged stream hangs inside
    # decord's reading of it, while the decoder's stderr is being captured
    cfg = PreprocessConfig(num_segments=4, resize_size=40, crop_size=32, timeout_s=1.0,
                           stream_threshold_bytes=threshold if threshold is not None else 1 << 30)
    r = preprocess_bounded(ObjectInfo("s3://stalled/v.mp4", 5000, "etag"), cfg)
    assert (r.ok, r.error_kind) == (False, TIMEOUT)
    assert "1 s" in r.error_message
    capfd.readouterr()
    os.write(2, b"console works\n")
    assert capfd.readouterr().err == "console works\n"
