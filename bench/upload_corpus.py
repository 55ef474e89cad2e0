"""An "upload-like" video corpus for benchmarks, made with ffmpeg and cached.

    .venv/bin/python bench/upload_corpus.py                      # 120 clips of 10 s
    .venv/bin/python bench/upload_corpus.py --count 8 --duration 300   # 5-minute videos
    .venv/bin/python bench/upload_corpus.py --count 4 --duration 2 --sizes 320x180

What user uploads look like to a decoder, as far as it matters for speed:
H.264 yuv420p at 25 fps with B-frames (`-bf 2`), a keyframe every 2 s
(`-g 50 -keyint_min 50 -sc_threshold 0`, a fixed GOP as phone and streaming
encoders write), half of the clips 1280x720 and half 640x272 (a wide, small
format), with motion and grain everywhere, so the encoder (and later the
decoder) does real work and a 10 s 720p clip is a few MB, not a few hundred kB.

Content cycles over three ffmpeg test sources, each varied per clip by its
index (the seed): `testsrc2` (moving pattern and counters), `life` (Conway's
game of life in 8-pixel cells) and `mandelbrot` (a slow zoom, rendered at quarter
size and scaled up, which is cheaper to render); every clip gets its own hue
and a temporal noise seed.

Clips are cached under one folder per encoding setting (duration, fps, GOP,
B-frames, CRF, preset), with deterministic names `clip0007-1280x720.mp4`, and
made again only when missing, so a corpus grows: `--count 200` after
`--count 120` makes 80 clips. The manifest is a CSV with one `uri` column of
absolute paths, the input format `tsm label` and the baselines take.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_CACHE = Path.home() / ".cache" / "tsm-labeller" / "upload-corpus"
DEFAULT_SIZES = ("1280x720", "640x272")
SOURCES = ("testsrc2", "life", "mandelbrot")
# x264 settings: CRF 23 is x264's default quality; veryfast keeps making 120 clips
# affordable on 2 cores and changes the file size more than the decode cost
CRF = 23
PRESET = "veryfast"
NOISE = 8  # temporal grain strength: without it, test patterns compress to almost nothing


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    width, height = int(w), int(h)
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"size {text!r}: need even width and height >= 16 (yuv420p)")
    return width, height


def _source(i: int, width: int, height: int, fps: int, duration: float) -> tuple[str, str]:
    """The lavfi source of clip `i` and the filters that bring it to width x height."""
    kind = SOURCES[i % len(SOURCES)]
    if kind == "testsrc2":
        return f"testsrc2=size={width}x{height}:rate={fps}", ""
    if kind == "life":
        # 8-pixel cells: one-pixel cells are pure entropy (tens of MB per clip)
        cw, ch = max(8, width // 8), max(8, height // 8)
        src = (f"life=size={cw}x{ch}:rate={fps}:ratio=0.3:mold=10:seed={i}"
               ":life_color=#C83232:death_color=#1E1E50:mold_color=#50A050")
        return src, f"scale={width}:{height}:flags=neighbor,"
    # mandelbrot: a slow zoom into the same point, rendered at quarter size (cheaper) and
    # scaled up (blurrier: fewer bits). The zoom's length follows the clip's, so a 5-minute
    # clip does not end deep in the set, where the detail turns to noise and the file balloons.
    qw, qh = max(16, width // 4 // 2 * 2), max(16, height // 4 // 2 * 2)
    zoom_s = duration * (40 + 10 * (i % 5))
    src = (f"mandelbrot=size={qw}x{qh}:rate={fps}:start_x=-0.743643887037151"
           f":start_y=0.131825904205330:start_scale=3:end_scale=0.0001:end_pts={zoom_s:g}")
    return src, f"scale={width}:{height},"


def corpus_folder(cache: Path, duration: float, fps: int, gop: int, bframes: int) -> Path:
    """One folder per encoding setting, so clips made with other settings never mix."""
    return cache / f"{duration:g}s-{fps}fps-g{gop}-bf{bframes}-crf{CRF}-{PRESET}"


def make_clip(path: Path, i: int, width: int, height: int, duration: float, fps: int,
              gop: int, bframes: int) -> Path:
    """Encode clip `i` to `path` (skipped when it exists); written whole, then renamed."""
    if path.exists() and path.stat().st_size > 0:
        return path
    src, scale = _source(i, width, height, fps, duration)
    vf = (f"{scale}hue=h={i * 47 % 360},noise=alls={NOISE}:allf=t+u:all_seed={i + 1},"
          "format=yuv420p")
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
         "-t", f"{duration:g}", "-f", "lavfi", "-i", src, "-vf", vf,
         "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF), "-pix_fmt", "yuv420p",
         "-r", str(fps), "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
         "-bf", str(bframes), "-an", "-movflags", "+faststart", str(tmp)],
        check=True,
    )
    tmp.rename(path)
    return path


def make_corpus(count: int = 120, duration: float = 10.0, *, sizes=DEFAULT_SIZES, fps: int = 25,
                gop: int = 50, bframes: int = 2, cache: Path = DEFAULT_CACHE,
                jobs: int | None = None, manifest: Path | None = None) -> Path:
    """Make (or reuse) `count` clips and write their manifest; returns the manifest's path.

    Clip i has size `sizes[i % len(sizes)]`, so the sizes split the corpus evenly.
    """
    sizes = [s if isinstance(s, tuple) else parse_size(s) for s in sizes]
    folder = corpus_folder(Path(cache), duration, fps, gop, bframes)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp.mp4"):  # left by a killed run
        stale.unlink()
    plan = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        plan.append((folder / f"clip{i:04d}-{w}x{h}.mp4", i, w, h))
    with ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
        paths = list(pool.map(
            lambda p: make_clip(*p, duration=duration, fps=fps, gop=gop, bframes=bframes), plan))
    if manifest is None:
        tag = "_".join(f"{w}x{h}" for w, h in sizes)
        manifest = folder / f"manifest-{count}-{tag}.csv"
    manifest = Path(manifest)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri"])
        writer.writerows([str(p.resolve())] for p in paths)
    return manifest


def read_manifest(path: Path) -> list[str]:
    """The `uri` column of a manifest CSV."""
    with open(path, newline="") as f:
        return [row["uri"] for row in csv.DictReader(f) if row.get("uri")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=120, help="clips")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES),
                        help="comma-separated WxH, used in turn (default: %(default)s)")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--gop", type=int, default=50, help="frames between keyframes")
    parser.add_argument("--bframes", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--jobs", type=int, default=None, help="ffmpeg runs in parallel")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="where the manifest CSV goes (default: in the corpus folder)")
    args = parser.parse_args()
    manifest = make_corpus(args.count, args.duration, sizes=args.sizes.split(","),
                           fps=args.fps, gop=args.gop, bframes=args.bframes, cache=args.cache,
                           jobs=args.jobs, manifest=args.manifest)
    uris = read_manifest(manifest)
    total = sum(os.path.getsize(u) for u in uris)
    print(f"{len(uris)} clips, {total / 1e6:.1f} MB in {Path(uris[0]).parent}")
    print(manifest)


if __name__ == "__main__":
    main()
