"""Test videos made with ffmpeg: good ones in several codecs and sizes, and broken ones.

The good videos show ffmpeg's `testsrc2` pattern, whose moving parts and frame
counter change on every frame, so a frame compared against ffmpeg's own decode
of frame K matches K and not a neighbour. Reference frames come from ffmpeg's
`select=eq(n\\,K)` filter, independent of the decoder under test.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FFMPEG = "ffmpeg"


@dataclass(frozen=True)
class Spec:
    """A good test video: codec arguments, size, frame rate, frames, container suffix."""

    name: str
    codec_args: tuple[str, ...]
    width: int = 96
    height: int = 64
    fps: int = 25
    frames: int = 40
    suffix: str = ".mp4"
    vfr: bool = False
    # testsrc2 only makes even sizes; an odd size is made by scaling to it
    scale_to: tuple[int, int] | None = None
    gop: int = 12  # frames between keyframes


# H.264, HEVC, VP9, MPEG-4, an odd size, variable frame rate and a single frame.
SPECS: dict[str, Spec] = {
    s.name: s
    for s in [
        Spec("h264", ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast")),
        Spec(
            "hevc",
            ("-c:v", "libx265", "-pix_fmt", "yuv420p", "-preset", "ultrafast",
             "-x265-params", "log-level=none"),
        ),
        Spec("vp9", ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"),
             suffix=".webm"),
        Spec("mpeg4", ("-c:v", "mpeg4", "-q:v", "3"), suffix=".avi"),
        # odd sizes need 4:4:4 (4:2:0 chroma needs even dimensions)
        Spec("odd", ("-c:v", "libx264", "-pix_fmt", "yuv444p", "-preset", "ultrafast"),
             width=320, height=240, frames=30, scale_to=(317, 239)),
        # some decoders pad the rows of some widths (96 is one): the frames must still be right
        Spec("w96", ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"),
             width=96, height=64, frames=20),
        Spec("vfr", ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"),
             frames=36, vfr=True, suffix=".mkv"),
        Spec("one_frame", ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"),
             frames=1),
    ]
}


def _run(args: list[str]) -> bytes:
    proc = subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {proc.stderr.decode(errors='replace')[-500:]}")
    return proc.stdout


def make_video(spec: Spec, path: Path) -> Path:
    """Encode `spec` into `path` (a file name without suffix gets the spec's suffix)."""
    if not path.suffix:
        path = path.with_suffix(spec.suffix)
    src = f"testsrc2=size={spec.width}x{spec.height}:rate={spec.fps}"
    filters = []
    timing: list[str] = []
    if spec.scale_to:
        filters.append(f"scale={spec.scale_to[0]}:{spec.scale_to[1]}")
    if spec.vfr:
        # uneven gaps between frames: every third frame is held three times as long
        filters.append("setpts='N/TB/25 + 2*floor(N/3)/TB/25'")
        timing = ["-fps_mode", "vfr"]
    vf = ["-vf", ",".join(filters)] if filters else []
    _run([
        "-f", "lavfi", "-i", src, "-frames:v", str(spec.frames), *vf, *timing,
        *spec.codec_args, "-g", str(spec.gop), str(path),
    ])
    return path


def make_cut(path: Path) -> Path:
    """An MP4 with its index up front (faststart) cut off halfway through the frames."""
    full = path.with_name(path.stem + "-full.mp4")
    _run([
        "-f", "lavfi", "-i", "testsrc2=size=128x96:rate=25", "-frames:v", "100",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-movflags", "+faststart",
        str(full),
    ])
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_audio_only(path: Path) -> Path:
    """An AAC-in-MP4 file with no video stream."""
    _run(["-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(path)])
    return path


def make_broken(kind: str, path: Path, good: Path | None = None) -> Path:
    """A broken input: 'empty', 'text', 'random' bytes, or 'truncated' (needs `good`)."""
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video, just a text file with a video name\n")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(7).bytes(20_000))
    elif kind == "truncated":
        assert good is not None
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    else:
        raise ValueError(kind)
    return path


def reference_frame(path: Path, index: int) -> np.ndarray:
    """Frame number `index` of `path` as ffmpeg decodes it: (H, W, 3) uint8 RGB."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    )
    width, height = (int(v) for v in probe.stdout.strip().split(",")[:2])
    raw = _run([
        "-i", str(path), "-vf", f"select=eq(n\\,{index})", "-fps_mode", "passthrough",
        "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ])
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)


def make_corpus(root: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Good videos (all SPECS unless `names`) in `root`, keyed by spec name."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names or list(SPECS):
        out[name] = make_video(SPECS[name], root / name)
    return out

