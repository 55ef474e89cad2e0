"""Routing: which videos NVDEC (through DALI) decodes and which go to the CPU decoder.

Pure table checks, no DALI needed; the routing of real files (probed with
ffprobe) is in test_decoder_dali.py.
"""

from __future__ import annotations

import pytest

from pipeline.decoders.routing import (
    CONSERVATIVE,
    CPU_ON_PURPOSE,
    MAX_GPU_DECODE_FRAMES,
    NVDEC_RULES,
    VideoProbe,
    caps_for,
    pixel_format,
    route,
    routing_rows,
)

HD = (1920, 1080)


def probe(codec, profile, pix_fmt, size=HD, bit_depth=None, num_frames=250):
    return VideoProbe(codec, profile, pix_fmt, bit_depth, size[0], size[1], num_frames)


@pytest.mark.parametrize(
    ("codec", "profile", "pix_fmt", "target"),
    [
        ("h264", "High", "yuv420p", "gpu"),
        ("h264", "Main", "yuvj420p", "gpu"),
        ("h264", "Constrained Baseline", "yuv420p", "gpu"),
        ("h264", "High 10", "yuv420p10le", "cpu"),  # no 10-bit H.264 before Blackwell
        ("h264", "High 4:2:2", "yuv422p", "cpu"),
        ("h264", "High 4:4:4 Predictive", "yuv444p", "cpu"),
        ("hevc", "Main", "yuv420p", "gpu"),
        ("hevc", "Main 10", "yuv420p10le", "gpu"),
        ("hevc", "Rext", "yuv420p12le", "cpu"),  # 12-bit: conservative
        ("hevc", "Rext", "yuv444p", "cpu"),  # 4:4:4: conservative (not on every GPU)
        ("vp8", None, "yuv420p", "gpu"),
        ("vp9", "Profile 0", "yuv420p", "gpu"),
        ("vp9", "Profile 2", "yuv420p10le", "gpu"),
        ("vp9", "Profile 1", "yuv444p", "cpu"),
        ("vp9", "Profile 1", "gbrp", "cpu"),
        ("av1", "Main", "yuv420p", "cpu"),  # conservative caps: no AV1 decoder assumed
        ("mpeg4", "Simple Profile", "yuv420p", "cpu"),
        ("mjpeg", "Baseline", "yuvj420p", "cpu"),
        ("prores", None, "yuv422p10le", "cpu"),  # not in the table
        ("", None, None, "cpu"),
    ],
)
def test_codec_profile_and_pixel_format(codec, profile, pix_fmt, target):
    r = route(probe(codec, profile, pix_fmt))
    assert r.target == target, r.reason
    assert r.reason


def test_av1_follows_the_gpu_generation():
    av1 = probe("av1", "Main", "yuv420p")
    assert route(av1, caps=caps_for((9, 0))).target == "cpu"  # H100: no AV1 in NVDEC
    assert route(av1, caps=caps_for((8, 0))).target == "cpu"  # A100
    assert route(av1, caps=caps_for((8, 9))).target == "gpu"  # L4 / L40
    assert route(av1, caps=caps_for((12, 0))).target == "gpu"  # Blackwell
    assert route(probe("av1", "High", "yuv444p"), caps=caps_for((8, 9))).target == "cpu"
    assert caps_for(None) is CONSERVATIVE and caps_for((99, 9)) is CONSERVATIVE


@pytest.mark.parametrize(
    ("codec", "size", "target"),
    [
        ("h264", (144, 144), "gpu"),
        ("h264", (143, 480), "cpu"),  # below the conservative minimum
        ("h264", (96, 64), "cpu"),
        ("hevc", (640, 120), "cpu"),
        ("h264", (4096, 2160), "gpu"),  # DCI 4K
        ("h264", (2160, 3840), "gpu"),  # portrait UHD
        ("h264", (4096, 2305), "cpu"),
        ("h264", (7680, 4320), "cpu"),  # 8K H.264 only on Blackwell
        ("hevc", (7680, 4320), "gpu"),
        ("vp9", (8192, 8192), "gpu"),
        ("vp9", (8193, 4320), "cpu"),
        ("vp8", (7680, 4320), "cpu"),
    ],
)
def test_frame_size_limits(codec, size, target):
    profile = {"h264": "High", "hevc": "Main", "vp9": "Profile 0", "vp8": None}[codec]
    assert route(probe(codec, profile, "yuv420p", size)).target == target


def test_h264_8k_on_blackwell():
    big = probe("h264", "High", "yuv420p", (7680, 4320))
    assert route(big, caps=caps_for((12, 0))).target == "gpu"
    assert route(big, caps=caps_for((9, 0))).target == "cpu"


def test_long_videos_go_to_the_cpu_decoder_which_seeks():
    short = probe("h264", "High", "yuv420p", num_frames=MAX_GPU_DECODE_FRAMES)
    long = probe("h264", "High", "yuv420p", num_frames=MAX_GPU_DECODE_FRAMES + 1)
    assert route(short).target == "gpu"
    assert route(long).target == "cpu"
    assert "seek" in route(long).reason
    # what counts is the last frame to decode, when the caller knows it
    assert route(long, last_index=100).target == "gpu"
    assert route(long, max_decode_frames=None).target == "gpu"
    assert route(probe("h264", "High", "yuv420p", num_frames=None)).target == "gpu"


def test_dali_cpu_backend_takes_vp8_vp9_mjpeg_only():
    for codec in ("vp8", "vp9", "mjpeg"):
        assert route(probe(codec, None, "yuv420p"), backend="dali-cpu").target == "gpu"
    for codec in ("h264", "hevc", "av1", "mpeg4"):
        assert route(probe(codec, "Main", "yuv420p"), backend="dali-cpu").target == "cpu"


def test_bit_depth_from_the_probe_wins_over_the_pixel_format():
    assert route(probe("h264", "High", "yuv420p", bit_depth=10)).target == "cpu"
    assert route(probe("hevc", "Main 10", "p010le")).target == "gpu"


@pytest.mark.parametrize(
    ("pix_fmt", "expected"),
    [
        ("yuv420p", ("420", 8)), ("yuvj420p", ("420", 8)), ("nv12", ("420", 8)),
        ("yuv420p10le", ("420", 10)), ("p010le", ("420", 10)), ("yuv422p", ("422", 8)),
        ("yuvj444p", ("444", 8)), ("yuva420p", ("420", 8)), ("gray", ("400", 8)),
        ("gray10le", ("400", 10)), ("gbrp", ("rgb", 8)), ("rgb24", (None, None)),
        (None, (None, None)),
    ],
)
def test_pixel_formats(pix_fmt, expected):
    assert pixel_format(pix_fmt) == expected


def test_every_rule_says_why():
    rows = routing_rows()
    assert {r["codec"] for r in rows} == set(NVDEC_RULES) | set(CPU_ON_PURPOSE)
    assert all(len(str(r["reason"])) > 40 for r in rows)


def test_a_file_with_fewer_packets_than_frames_goes_to_the_cpu_decoder():
    cut = VideoProbe("vp9", "Profile 0", "yuv420p", 8, 640, 360, num_frames=250, packets=120)
    whole = VideoProbe("vp9", "Profile 0", "yuv420p", 8, 640, 360, num_frames=250, packets=250)
    for backend in ("nvdec", "dali-cpu"):
        assert route(cut, backend=backend).target == "cpu"
        assert "cut short" in route(cut, backend=backend).reason
        assert route(whole, backend=backend).target == "gpu"
