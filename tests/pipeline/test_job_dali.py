"""The label job with `--decoder dali` on DALI's CPU backend (VP9 and MJPEG decode there).

The same videos are labelled twice, with the CPU decoder and with DALI in the
model actors: every video gets one row either way, the same verdict and
frame indices, the same top label (on smooth sources, where DALI's chroma
upsampling barely shows: docs/gpu.md), and a `decoder` column that says which
decoder made its frames. H.264, which DALI's CPU backend cannot decode, is
routed to the CPU decode tasks; broken files get the CPU decoder's error rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip(
    "nvidia.dali",
    reason="NVIDIA DALI is not installed: its wheel (nvidia-dali-cuda130, the 'gpu' extra) "
           "exists for Linux x86-64 only",
    exc_type=ImportError,
)

import videos
from conftest import output_rows

from pipeline.job import run_label
from pipeline.settings import LabelConfig

pytestmark = pytest.mark.usefixtures("ray_cluster", "mlflow_store")

FRAMES = 30


def _encode(path: Path, args: list[str], size: str) -> Path:
    # blurred testsrc2: smooth colours, so DALI's and FFmpeg's 4:2:0 to RGB agree closely
    videos._run(["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25", "-frames:v",
                 str(FRAMES), "-vf", "gblur=sigma=2,hue=H=2*PI*t", *args, "-g", "12",
                 str(path)])
    return path


VP9 = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-threads", "1"]
MJPEG = ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"]
H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]


@pytest.fixture(scope="module")
def dali_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dali-corpus")
    _encode(root / "vp9.webm", VP9, "160x120")
    _encode(root / "vp9_wide.webm", VP9, "192x108")
    _encode(root / "mjpeg.avi", MJPEG, "160x120")
    _encode(root / "h264.mp4", H264, "160x120")
    data = (root / "mjpeg.avi").read_bytes()
    (root / "cut_mjpeg.avi").write_bytes(data[: len(data) // 2])  # 15 frames left, no index
    (root / "empty.webm").write_bytes(b"")
    videos.make_broken("random", root / "random.webm")
    return root


@pytest.fixture(scope="module")
def both_runs(dali_corpus, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("dali-out")
    rows = {}
    for decoder in ("cpu", "dali"):
        config = LabelConfig(input=str(dali_corpus), output=str(out / decoder),
                             model=str(tiny_model), decoder=decoder, top_k=4)
        summary = run_label(config)
        rows[decoder] = ({Path(r["video_uri"]).name: r
                          for r in output_rows(str(out / decoder)).to_pylist()}, summary)
    return rows


def test_every_video_gets_one_row_with_the_same_verdict(both_runs, dali_corpus):
    (cpu, _), (dali, summary) = both_runs["cpu"], both_runs["dali"]
    names = sorted(p.name for p in dali_corpus.iterdir())
    assert sorted(cpu) == sorted(dali) == names
    for name in names:
        assert (dali[name]["status"], dali[name]["error_kind"]) == \
            (cpu[name]["status"], cpu[name]["error_kind"]), name
    assert dali["empty.webm"]["error_kind"] == "empty"
    assert dali["random.webm"]["error_kind"] == "corrupt"
    # both decoders count the 15 frames that are there and sample from them
    assert dali["cut_mjpeg.avi"]["num_frames"] == cpu["cut_mjpeg.avi"]["num_frames"] == 15
    # H.264 and the two broken files: their verdict is the CPU decoder's
    assert summary.decoders == {"dali": 4, "cpu": 3}


def test_dali_decodes_what_it_can_and_the_cpu_decoder_the_rest(both_runs):
    cpu, dali = both_runs["cpu"][0], both_runs["dali"][0]
    ok = ["vp9.webm", "vp9_wide.webm", "mjpeg.avi", "cut_mjpeg.avi", "h264.mp4"]
    assert {n: r["decoder"] for n, r in cpu.items() if r["status"] == "ok"} == \
        dict.fromkeys(ok, "cpu")
    assert {n: r["decoder"] for n, r in dali.items() if r["status"] == "ok"} == {
        **dict.fromkeys(ok[:4], "dali"), "h264.mp4": "cpu"}  # DALI's CPU backend: no H.264
    # DALI decodes from the first frame up to the last one asked for
    vp9 = dali["vp9.webm"]
    assert vp9["frames_decoded"] == max(vp9["frame_indices"]) + 1
    # shipped whole, after the probe read its header and index
    assert vp9["bytes_read"] >= Path(vp9["video_uri"]).stat().st_size


def test_dali_rows_match_the_cpu_rows(both_runs):
    import numpy as np

    cpu, dali = both_runs["cpu"][0], both_runs["dali"][0]
    for name in ("vp9.webm", "vp9_wide.webm", "mjpeg.avi", "h264.mp4"):
        c, d = cpu[name], dali[name]
        for column in ("frame_indices", "num_frames", "width", "height", "sampling"):
            assert d[column] == c[column], (name, column)
        assert d["top_k_labels"][0] == c["top_k_labels"][0], name
        np.testing.assert_allclose(d["top_k_scores"], c["top_k_scores"], atol=0.02)
        a, b = np.asarray(c["embedding"]), np.asarray(d["embedding"])
        assert np.linalg.norm(a - b) <= 0.15 * np.linalg.norm(a), name


def test_decoder_dali_without_dali_or_with_a_bad_value_is_one_line(tmp_path, monkeypatch,
                                                                   tiny_model):
    from pipeline.decoders import dali as dali_mod
    from pipeline.errors import LabelError

    with pytest.raises(LabelError, match="decoder must be one of auto, cpu, dali"):
        LabelConfig(input="i", output="o", model="m", decoder="nvdec")
    monkeypatch.setattr(dali_mod, "dali_import_error", lambda: "NVIDIA DALI is not usable: x")
    config = LabelConfig(input=str(tmp_path), output=str(tmp_path / "o"), model=str(tiny_model),
                         decoder="dali")
    shutil.copy(videos.make_broken("random", tmp_path / "a.webm"), tmp_path / "b.webm")
    with pytest.raises(LabelError, match="--decoder dali: NVIDIA DALI is not usable"):
        run_label(config)
