"""A synthetic action corpus whose classes only a temporal model can tell apart.

Ten classes in five time-reversed pairs: moving right/left, down/up,
growing/shrinking, rotating clockwise/anticlockwise, appearing/disappearing.
Each video is rendered as the *forward* member of its pair; the backward member
is exactly that frame sequence played in reverse. So inside a pair the set of
frames is identical and only their order differs: a frame-order-blind model
(TSN) is at chance inside each pair, while TSM can learn the direction.

Scenes vary at random: background (solid, gradient, stripes, checker, blotchy
noise), an optional static distractor shape, the moving object's shape,
colour and texture, its start position, speed and extent, the clip length
and the frame rate. Videos are real H.264 mp4 files written by piping raw RGB
frames into ffmpeg. Everything is a pure function of the seed.

Layout written by `generate`::

    OUT/videos/00000.mp4 ...
    OUT/train.csv  OUT/val.csv  OUT/test.csv     columns: uri (absolute path), label
    OUT/classes.json                             class names, in label-id order
    OUT/corpus.json                              the settings the videos were made with

CSV is the manifest format because it is readable everywhere (pyarrow,
pandas, DuckDB, a text editor) and the label job accepts it as a manifest.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.errors import check

# label-id order; (2k, 2k+1) is a forward/backward pair
CLASSES: tuple[str, ...] = (
    "move_right",
    "move_left",
    "move_down",
    "move_up",
    "grow",
    "shrink",
    "rotate_clockwise",
    "rotate_anticlockwise",
    "appear",
    "disappear",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
SHAPES = ("circle", "square", "triangle", "star", "arrow", "ell")
# shapes whose orientation is unambiguous under rotation (no rotational symmetry)
ASYMMETRIC_SHAPES = ("triangle", "arrow", "ell")


def pair_of(label: str) -> str:
    """The time-reversed partner of a class (`move_left` <-> `move_right`, ...)."""
    i = CLASSES.index(label)
    return CLASSES[i ^ 1]


def is_forward(label: str) -> bool:
    """Whether the class is rendered directly (even id) rather than as a reversal."""
    return CLASSES.index(label) % 2 == 0


@dataclass(frozen=True)
class SynthConfig:
    """What `generate` makes: corpus size, seed, frame size and the ranges scenes draw from."""

    videos: int = 1000
    seed: int = 0
    size: int = 128
    min_frames: int = 24
    max_frames: int = 64
    min_fps: int = 12
    max_fps: int = 30
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    crf: int = 18  # near-lossless at this size; keeps files small and the reversal faithful
    workers: int = 2

    def __post_init__(self) -> None:
        check(self.videos >= 1, f"videos must be >= 1, got {self.videos}")
        check(2 <= self.min_frames <= self.max_frames,
              f"need 2 <= min frames <= max frames, got {self.min_frames}-{self.max_frames}")
        check(1 <= self.min_fps <= self.max_fps,
              f"need 1 <= min fps <= max fps, got {self.min_fps}-{self.max_fps}")
        check(self.size >= 16 and self.size % 2 == 0,
              f"size must be even and >= 16 (H.264 with yuv420p), got {self.size}")
        check(self.workers >= 1, f"workers must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class VideoSpec:
    """One video: its class, scene seed, frame size, length and frame rate."""

    label: str
    seed: int
    size: int
    num_frames: int
    fps: int


def video_seed(corpus_seed: int, index: int) -> int:
    """Independent, reproducible per-video seed."""
    return int(np.random.SeedSequence([corpus_seed, index]).generate_state(1)[0])


# ---------------------------------------------------------------- drawing


def _shape_points(shape: str) -> np.ndarray:
    """Outline of a unit-radius shape around the origin, (N, 2) in (x, y)."""
    if shape == "circle":
        a = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.8
    if shape == "triangle":  # a thin isosceles "pointer", so orientation is obvious
        return np.array([[1.0, 0.0], [-0.8, -0.55], [-0.8, 0.55]])
    if shape == "star":
        a = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "arrow":
        return np.array(
            [[1.0, 0.0], [0.2, -0.6], [0.2, -0.25], [-1.0, -0.25], [-1.0, 0.25], [0.2, 0.25],
             [0.2, 0.6]]
        )
    if shape == "ell":
        return np.array(
            [[-0.8, -1.0], [-0.3, -1.0], [-0.3, 0.5], [0.8, 0.5], [0.8, 1.0], [-0.8, 1.0]]
        )
    raise ValueError(f"unknown shape {shape}")


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _contrasting(rng: np.random.Generator, against: np.ndarray) -> np.ndarray:
    """A colour far enough from `against` (mean background colour) to stay visible."""
    for _ in range(50):
        c = _colour(rng)
        if np.linalg.norm(c - against) > 150:
            return c
    return 255.0 - against


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random (H, W, 3) float background: solid, gradient, stripes, checker or noise."""
    kind = rng.choice(["solid", "gradient", "stripes", "checker", "noise"])
    c1, c2 = _colour(rng), _colour(rng)
    # keep the two tones close-ish so the object stays the salient thing
    c2 = c1 + (c2 - c1) * rng.uniform(0.15, 0.4)
    yy, xx = np.mgrid[0:size, 0:size].astype(float) / size
    if kind == "solid":
        w = np.zeros((size, size))
    elif kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        w = (np.cos(a) * xx + np.sin(a) * yy + 1.5) / 3.0
    elif kind == "stripes":
        a, f = rng.uniform(0, np.pi), rng.uniform(3, 10)
        w = (np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy)) > 0).astype(float)
    elif kind == "checker":
        n = rng.integers(3, 9)
        w = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(float)
    else:
        coarse = rng.uniform(0, 1, size=(6, 6))
        w = np.asarray(
            Image.fromarray((coarse * 255).astype(np.uint8)).resize(
                (size, size), Image.Resampling.BICUBIC
            ),
            float,
        ) / 255.0
    return c1 + w[..., None] * (c2 - c1)


def _fill(rng: np.random.Generator, size: int, bg_mean: np.ndarray) -> np.ndarray:
    """The object's (H, W, 3) fill: solid or two-tone stripes, contrasting the background."""
    c1 = _contrasting(rng, bg_mean)
    if rng.random() < 0.5:
        return np.broadcast_to(c1, (size, size, 3)).astype(float)
    c2 = np.clip(c1 + rng.uniform(-60, 60, size=3), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(float) / size
    a, f = rng.uniform(0, np.pi), rng.uniform(6, 14)
    w = (np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy)) > 0).astype(float)
    return c1 + w[..., None] * (c2 - c1)


def _mask(size: int, points: np.ndarray) -> np.ndarray:
    """(H, W) float mask of a polygon, drawn at 2x and downsampled for soft edges."""
    img = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in (points * 2).tolist()], fill=255)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), float) / 255.0


def _place(shape: np.ndarray, centre: tuple[float, float], radius: float, angle: float):
    """Shape outline scaled, rotated by `angle` (clockwise on screen, y down) and moved."""
    c, s = math.cos(angle), math.sin(angle)
    rot = shape @ np.array([[c, s], [-s, c]])
    return rot * radius + np.asarray(centre)


# ---------------------------------------------------------------- rendering


def render(spec: VideoSpec) -> np.ndarray:
    """The video's frames, (T, H, W, 3) uint8 RGB.

    The scene depends only on (seed, pair, size, length); the backward member
    of a pair is the forward member's frames in reverse order, exactly.
    """
    forward_label = spec.label if is_forward(spec.label) else pair_of(spec.label)
    frames = _render_forward(forward_label, spec.seed, spec.size, spec.num_frames)
    return frames if is_forward(spec.label) else np.ascontiguousarray(frames[::-1])


def _render_forward(label: str, seed: int, size: int, num_frames: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bg = _background(rng, size)
    bg_mean = bg.reshape(-1, 3).mean(0)
    if rng.random() < 0.35:  # a static distractor that never moves
        d_shape = _shape_points(str(rng.choice(SHAPES)))
        d_pts = _place(d_shape, tuple(rng.uniform(0.15, 0.85, 2) * size),
                       rng.uniform(0.06, 0.12) * size, rng.uniform(0, 2 * np.pi))
        dm = _mask(size, d_pts)[..., None]
        bg = bg * (1 - dm) + _contrasting(rng, bg_mean) * 0.6 * dm + bg * 0.4 * dm
    fill = _fill(rng, size, bg_mean)
    shapes = ASYMMETRIC_SHAPES if label == "rotate_clockwise" else SHAPES
    shape = _shape_points(str(rng.choice(shapes)))
    angle0 = rng.uniform(0, 2 * np.pi)
    t = np.linspace(0.0, 1.0, num_frames)
    S = float(size)

    radius = np.full(num_frames, rng.uniform(0.13, 0.2) * S)
    angle = np.full(num_frames, angle0)
    alpha = np.ones(num_frames)
    reveal = None  # per-frame x threshold of a left-to-right wipe
    cx = np.full(num_frames, rng.uniform(0.3, 0.7) * S)
    cy = np.full(num_frames, rng.uniform(0.3, 0.7) * S)

    if label in ("move_right", "move_down"):
        r = radius[0]
        travel = rng.uniform(0.45, 0.65) * S
        # up to half the object may be outside the frame at either end
        start = rng.uniform(0.5 * r, S - 0.5 * r - travel)
        track = start + travel * t
        if label == "move_right":
            cx = track
            cy = np.full(num_frames, rng.uniform(r, S - r))
        else:
            cy = track
            cx = np.full(num_frames, rng.uniform(r, S - r))
    elif label == "grow":
        r0, r1 = rng.uniform(0.05, 0.08) * S, rng.uniform(0.25, 0.33) * S
        radius = r0 + (r1 - r0) * t
        cx[:] = rng.uniform(r1, S - r1)
        cy[:] = rng.uniform(r1, S - r1)
    elif label == "rotate_clockwise":
        radius[:] = rng.uniform(0.22, 0.32) * S
        turn = np.deg2rad(rng.uniform(150, 250))
        angle = angle0 + turn * t
        cx[:] = rng.uniform(radius[0], S - radius[0])
        cy[:] = rng.uniform(radius[0], S - radius[0])
    elif label == "appear":
        a, b = rng.uniform(0.0, 0.25), rng.uniform(0.65, 1.0)
        ramp = np.clip((t - a) / (b - a), 0.0, 1.0)
        if rng.random() < 0.5:
            alpha = ramp  # fade in
        else:  # wipe in from the left across the object's extent
            left, right = cx[0] - radius[0], cx[0] + radius[0]
            reveal = left + (right - left) * ramp
    else:
        raise ValueError(f"not a forward class: {label}")

    xx = np.arange(size)[None, :] + 0.5
    out = np.empty((num_frames, size, size, 3), np.uint8)
    for i in range(num_frames):
        m = _mask(size, _place(shape, (cx[i], cy[i]), radius[i], angle[i])) * alpha[i]
        if reveal is not None:
            m = m * (xx < reveal[i])
        m = m[..., None]
        out[i] = np.clip(bg * (1 - m) + fill * m, 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------- corpus


def encode_mp4(frames: np.ndarray, fps: int, path: Path, crf: int = 18,
               gop: int | None = None) -> None:
    """Write (T, H, W, 3) uint8 RGB frames as an H.264 mp4 through ffmpeg (atomic rename).

    `gop`: a keyframe every `gop` frames exactly (no scene-cut keyframes); None keeps
    x264's defaults (the corpus's: at most 250 frames apart, so a clip's first frame is
    its only keyframe, unless a scene cut adds one).
    """
    _, h, w, _ = frames.shape
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    keys = ([] if gop is None else
            ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"])
    cmd = [
        "ffmpeg", "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
        *keys, "-threads", "1", "-an", str(tmp),
    ]  # fmt: skip
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed for {path}: {proc.stderr.decode(errors='replace')}")
    os.replace(tmp, path)


def split_sizes(videos: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """(train, val, test) sizes: val and test `round(videos * fraction)`, train the rest.

    From 3 videos on, val and test (with a fraction above 0) get at least one
    video each, so a small corpus still has something to validate and test on.
    """
    n_val, n_test = round(videos * fractions[1]), round(videos * fractions[2])
    if videos >= 3:
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    elif videos == 2 and fractions[1] > 0:
        n_val, n_test = 1, 0
    else:
        n_val = n_test = 0
    return videos - n_val - n_test, n_val, n_test


def plan(config: SynthConfig) -> list[tuple[VideoSpec, str]]:
    """Every video's spec and split, balanced over classes and stratified over splits.

    Each class's videos are shuffled; then the classes take turns (every
    class's first video, then every class's second, ...) and the first
    `train` videos of that order are the training split, the next `val` the
    validation split, the rest the test split (sizes from `split_sizes`). So
    each split holds every class equally, to within one video.
    """
    rng = np.random.default_rng(config.seed)
    out: list[tuple[VideoSpec, str]] = []
    per_class: dict[str, list[int]] = {c: [] for c in CLASSES}
    for i in range(config.videos):
        per_class[CLASSES[i % len(CLASSES)]].append(i)
    shuffled = [[int(x) for x in rng.permutation(ids)] for ids in per_class.values()]
    turns = [ids[k] for k in range(max(map(len, shuffled))) for ids in shuffled if k < len(ids)]
    n_train, n_val, _ = split_sizes(config.videos, config.split_fractions)
    split_of = {i: "train" if k < n_train else "val" if k < n_train + n_val else "test"
                for k, i in enumerate(turns)}
    for i in range(config.videos):
        vrng = np.random.default_rng(video_seed(config.seed, i) ^ 0x5EED)
        spec = VideoSpec(
            label=CLASSES[i % len(CLASSES)],
            seed=video_seed(config.seed, i),
            size=config.size,
            num_frames=int(vrng.integers(config.min_frames, config.max_frames + 1)),
            fps=int(vrng.integers(config.min_fps, config.max_fps + 1)),
        )
        out.append((spec, split_of[i]))
    return out


def _make_one(job: tuple[VideoSpec, str, int]) -> str:
    spec, path, crf = job
    target = Path(path)
    if not target.exists():  # a rerun skips what is already written (and still valid)
        encode_mp4(render(spec), spec.fps, target, crf)
    return path


RECORD = "corpus.json"  # the settings the corpus's videos were made with
MANIFESTS = tuple(f"{split}.csv" for split in SPLITS)
_VIDEO_NAME = re.compile(r"\.?(\d{5,})(\.tmp)?\.mp4")  # 00042.mp4, or .00042.tmp.mp4


def video_settings(config: SynthConfig) -> dict[str, int]:
    """What a video's pixels depend on besides its index (not the corpus size or splits)."""
    return {"seed": config.seed, "size": config.size, "min_frames": config.min_frames,
            "max_frames": config.max_frames, "min_fps": config.min_fps,
            "max_fps": config.max_fps, "crf": config.crf}


def corpus_files(out_dir: str | Path) -> list[str]:
    """The files of a corpus already in `out_dir` (manifests, record, `videos/`), if any."""
    root = Path(out_dir)
    found = [name for name in (*MANIFESTS, "classes.json", RECORD) if (root / name).is_file()]
    videos = root / "videos"
    if videos.is_dir() and any(_VIDEO_NAME.fullmatch(p.name) for p in videos.iterdir()):
        found.append("videos/")
    return found


def record_of(config: SynthConfig) -> dict:
    """What `generate` writes to corpus.json: the corpus's size, splits and video settings."""
    return {"videos": config.videos, "split_fractions": list(config.split_fractions),
            "videos_made_with": video_settings(config)}


def recorded(out_dir: str | Path) -> dict | None:
    """The record of the corpus in `out_dir` (None if there is none, or it is unreadable)."""
    try:
        record = json.loads((Path(out_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _clear_stale(root: Path, config: SynthConfig) -> None:
    """Make `root` hold only videos the new corpus names, made with its settings.

    Videos are kept when the recorded settings match (index `i` is then the
    same video); otherwise, and for indices past the new size, they are
    removed, as are the old manifests (rewritten at the end). Files that are
    not the corpus's own (other names) are left alone.
    """
    same = (recorded(root) or {}).get("videos_made_with") == video_settings(config)
    for name in (*MANIFESTS, "classes.json"):
        (root / name).unlink(missing_ok=True)
    for path in (root / "videos").iterdir():
        m = _VIDEO_NAME.fullmatch(path.name)
        if m and (not same or m.group(2) or int(m.group(1)) >= config.videos):
            path.unlink(missing_ok=True)
    (root / RECORD).write_text(json.dumps(record_of(config), indent=1) + "\n")


def generate(
    out_dir: str | Path,
    config: SynthConfig,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Path]:
    """Write the corpus under `out_dir`; returns {split: manifest path}.

    `progress(n)` is called as each video is written. A corpus already in
    `out_dir` is replaced consistently: its videos are reused where the new
    settings make the very same video, the others are removed (no video is
    left that the new manifests do not name) and the manifests are rewritten.
    """
    root = Path(out_dir).resolve()
    (root / "videos").mkdir(parents=True, exist_ok=True)
    _clear_stale(root, config)
    planned = plan(config)
    jobs = [(spec, str(root / "videos" / f"{i:05d}.mp4"), config.crf) for i, (spec, _) in
            enumerate(planned)]
    with ProcessPoolExecutor(max_workers=max(1, config.workers)) as pool:
        for _ in pool.map(_make_one, jobs, chunksize=4):
            if progress is not None:
                progress(1)
    manifests: dict[str, Path] = {}
    for split in SPLITS:
        path = root / f"{split}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["uri", "label"])
            for (spec, s), (_, uri, _) in zip(planned, jobs, strict=True):
                if s == split:
                    w.writerow([uri, spec.label])
        manifests[split] = path
    (root / "classes.json").write_text(json.dumps(list(CLASSES), indent=1) + "\n")
    return manifests


def combine_manifests(manifests: dict[str, Path], path: Path) -> Path:
    """One manifest (`uri`, `label`) of every split's rows, sorted by URI."""
    rows: list[list[str]] = []
    for split_manifest in manifests.values():
        with open(split_manifest, newline="") as f:
            rows.extend(r for r in csv.reader(f) if r != ["uri", "label"])
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["uri", "label"], *sorted(rows)])
    return path

