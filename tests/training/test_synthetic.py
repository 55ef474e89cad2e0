"""The synthetic corpus: classes are what they claim, pairs are exact reversals, files are real."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.decoders import decoder_for
from pipeline.sampling import sampler
from training import synthetic
from training.synthetic import CLASSES, SynthConfig, VideoSpec, pair_of, render

FORWARD = [c for c in CLASSES if synthetic.is_forward(c)]


def decode_all(path: str, n: int):
    """n evenly spaced frames of a video (all of them when it has n), through the CPU decoder."""
    return decoder_for("cpu").decode(path, sampler("uniform", n))


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def spec(label: str, seed: int = 7, frames: int = 32) -> VideoSpec:
    return VideoSpec(label=label, seed=seed, size=64, num_frames=frames, fps=15)


def object_mask(frames: np.ndarray) -> np.ndarray:
    """Pixels that differ from the per-pixel temporal median (the static background)."""
    bg = np.median(frames.astype(float), axis=0)
    return np.abs(frames.astype(float) - bg).sum(-1) > 40


def centroids(frames: np.ndarray) -> np.ndarray:
    """(T, 2) centroid (x, y) of the moving object in each frame."""
    out = []
    for m in object_mask(frames):
        ys, xs = np.nonzero(m)
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


@pytest.mark.parametrize("forward", FORWARD)
@pytest.mark.parametrize("seed", [1, 2])
def test_backward_class_is_exact_reversal(forward, seed):
    backward = pair_of(forward)
    a = render(spec(forward, seed))
    b = render(spec(backward, seed))
    assert a.shape == (32, 64, 64, 3)
    np.testing.assert_array_equal(b, a[::-1])
    # the frames really change over time (otherwise reversal would be trivial)
    assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 1.0


@pytest.mark.parametrize("label, axis, sign", [
    ("move_right", 0, 1), ("move_left", 0, -1), ("move_down", 1, 1), ("move_up", 1, -1),
])
@pytest.mark.parametrize("seed", [3, 4, 5])
def test_motion_direction_matches_label(label, axis, sign, seed):
    c = centroids(render(spec(label, seed)))
    step = np.diff(c[:, axis])
    assert sign * (c[-1, axis] - c[0, axis]) > 10  # pixels, at 64 px frames
    assert (sign * step > -1.0).mean() > 0.9  # monotone apart from rasterisation jitter
    assert abs(c[-1, 1 - axis] - c[0, 1 - axis]) < 4  # no motion on the other axis


@pytest.mark.parametrize("seed", [3, 4])
def test_grow_and_appear_change_the_visible_area(seed):
    def area(label):  # object pixels: differ from the frame where the object is least visible
        f = render(spec(label, seed)).astype(float)
        ref = f[0] if label in ("grow", "appear") else f[-1]
        return np.array([(np.abs(x - ref).sum(-1) > 40).sum() for x in f])

    grow, shrink = area("grow"), area("shrink")
    assert grow[-1] > grow[len(grow) // 2] > grow[1]
    assert shrink[0] > shrink[len(shrink) // 2] > shrink[-2]
    appear = area("appear")
    assert appear[-1] > 20 and appear[0] == 0


def test_rotation_uses_asymmetric_shapes_and_turns():
    f = render(spec("rotate_clockwise", 11))
    m0, m1 = object_mask(f)[0], object_mask(f)[len(f) // 2]
    assert m0.sum() > 20 and (m0 ^ m1).sum() > 0.2 * m0.sum()  # the silhouette turned


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(videos=20, seed=5, size=64, min_frames=16, max_frames=24, workers=2)
    return out, cfg, synthetic.generate(out, cfg)


def test_generate_writes_decodable_balanced_manifests(corpus):
    out, cfg, manifests = corpus
    rows = {s: read_rows(p) for s, p in manifests.items()}
    assert set(rows) == {"train", "val", "test"}
    all_rows = [r for rs in rows.values() for r in rs]
    assert len(all_rows) == 20 and len({r["uri"] for r in all_rows}) == 20
    assert sorted(r["label"] for r in all_rows) == sorted(CLASSES * 2)
    assert json.loads((out / "classes.json").read_text()) == list(CLASSES)
    for r in all_rows:
        clip = decode_all(r["uri"], 2)
        assert cfg.min_frames <= clip.meta.num_frames <= cfg.max_frames
        assert clip.frames[0].shape == (64, 64, 3)


def test_encoded_pair_decodes_to_reversed_frames(tmp_path):
    fwd, bwd = tmp_path / "f.mp4", tmp_path / "b.mp4"
    synthetic.encode_mp4(render(spec("move_right", 9)), 15, fwd)
    synthetic.encode_mp4(render(spec("move_left", 9)), 15, bwd)
    a = decode_all(str(fwd), 32).frames.astype(int)
    b = decode_all(str(bwd), 32).frames.astype(int)
    # lossy H.264 on both sides: equal up to small coding noise, frame by frame
    diff = np.abs(b - a[::-1]).mean(axis=(1, 2, 3))
    assert diff.max() < 3.0
    # ... and clearly unlike the forward order where the object is far from its reversed place
    forward_order = np.abs(b - a).mean(axis=(1, 2, 3))
    assert forward_order[0] > 2 * diff[0] and forward_order[-1] > 2 * diff[-1]


def test_encode_with_a_fixed_gop(tmp_path):
    """`gop=N`: a keyframe every N frames exactly (bench/sampling_accuracy.py's re-encodes);
    the default: x264's, one keyframe at the start of a clip this short."""
    from pipeline.decoders.pyav import probe

    frames = render(spec("grow", 3, frames=40))
    synthetic.encode_mp4(frames, 20, tmp_path / "g10.mp4", gop=10)
    synthetic.encode_mp4(frames, 20, tmp_path / "default.mp4")
    assert probe(str(tmp_path / "g10.mp4")).keyframes == (0, 10, 20, 30)
    assert probe(str(tmp_path / "default.mp4")).keyframes == (0,)


def test_same_seed_same_corpus(corpus, tmp_path):
    out, cfg, manifests = corpus
    again = synthetic.generate(tmp_path, cfg)
    for split in manifests:
        first = [r["label"] for r in read_rows(manifests[split])]
        second = [r["label"] for r in read_rows(again[split])]
        assert first == second
    a = sorted((out / "videos").iterdir())[0].read_bytes()
    b = sorted((tmp_path / "videos").iterdir())[0].read_bytes()
    assert a == b


def test_cli_synth_and_bad_flags(tmp_path):
    from jobs.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["data", "synth", str(tmp_path / "c"), "--videos", "10", "--seed",
                              "1", "--size", "32", "--frames", "8-12"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "train.csv").is_file()
    for bad in (["--frames", "abc"], ["--frames", "9-3"], ["--size", "33"]):
        res = runner.invoke(app, ["data", "synth", str(tmp_path / "d"), *bad])
        assert res.exit_code == 2
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), res.output
        assert "Traceback" not in res.output


@pytest.mark.parametrize("videos, sizes", [
    (1, (1, 0, 0)), (2, (1, 1, 0)), (3, (1, 1, 1)), (20, (14, 3, 3)), (30, (22, 4, 4)),
    (2000, (1400, 300, 300)),
])
def test_small_corpora_still_have_a_val_and_a_test_split(videos, sizes):
    assert synthetic.split_sizes(videos, SynthConfig.split_fractions) == sizes
    got = [s for _, s in synthetic.plan(SynthConfig(videos=videos, seed=1))]
    assert tuple(got.count(s) for s in ("train", "val", "test")) == sizes
    if videos >= 10:  # the classes take turns: every class is in the training split
        train = {spec.label for spec, s in synthetic.plan(SynthConfig(videos=videos, seed=1))
                 if s == "train"}
        assert train == set(CLASSES)


def test_splits_of_a_large_corpus_are_stratified_per_class():
    planned = synthetic.plan(SynthConfig(videos=2000, seed=2019))
    for c in CLASSES:
        splits = [s for spec, s in planned if spec.label == c]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (140, 30, 30)


def _manifest_uris(root) -> set[str]:
    return {r["uri"] for split in ("train", "val", "test")
            for r in read_rows(root / f"{split}.csv")}


def test_synth_completes_the_same_corpus_refuses_another_and_replaces_it_with_force(
        tmp_path):
    from jobs.cli import app

    runner = CliRunner()
    out = tmp_path / "c"
    base = ["data", "synth", str(out), "--size", "32", "--frames", "8-10", "--no-progress"]
    res = runner.invoke(app, [*base, "--videos", "12", "--seed", "1"])
    assert res.exit_code == 0, res.output
    first = {p.name: p.read_bytes() for p in (out / "videos").iterdir()}
    assert len(first) == 12 and _manifest_uris(out) == {str(out / "videos" / n) for n in first}
    # the same command again (an interrupted run, say): it completes the same corpus
    (out / "videos" / "00011.mp4").unlink()
    stamp = {n: (out / "videos" / n).stat().st_mtime_ns for n in first if n != "00011.mp4"}
    res = runner.invoke(app, [*base, "--videos", "12", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert {p.name: p.read_bytes() for p in (out / "videos").iterdir()} == first
    assert {n: (out / "videos" / n).stat().st_mtime_ns for n in stamp} == stamp
    # another corpus into the same folder: refused, one line, nothing touched
    for other in (["--videos", "5", "--seed", "1"], ["--videos", "12", "--seed", "2"]):
        res = runner.invoke(app, [*base, *other])
        assert res.exit_code == 2 and res.stdout == ""
        (line,) = res.stderr.splitlines()
        assert line.startswith(f"error: {out} already holds another corpus (")
        assert "--force" in line
        assert {p.name: p.read_bytes() for p in (out / "videos").iterdir()} == first
    # --force: a smaller corpus with another seed; no video left that the manifests do not name
    (out / "videos" / ".00003.tmp.mp4").write_bytes(b"left by a killed run")
    (out / "videos" / "notes.txt").write_text("not the corpus's")
    res = runner.invoke(app, [*base, "--videos", "5", "--seed", "2", "--force"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [f"{s}: {out / s}.csv" for s in ("train", "val", "test")]
    videos = sorted(p.name for p in (out / "videos").glob("*.mp4"))
    assert videos == [f"{i:05d}.mp4" for i in range(5)]
    assert (out / "videos" / "notes.txt").exists()  # not ours: left alone
    assert _manifest_uris(out) == {str(out / "videos" / n) for n in videos}
    fresh = tmp_path / "fresh"
    synthetic.generate(fresh, SynthConfig(videos=5, seed=2, size=32, min_frames=8, max_frames=10))
    for name in videos:  # re-rendered with the new seed, not kept from the old corpus
        assert (out / "videos" / name).read_bytes() == (fresh / "videos" / name).read_bytes()
    # the same settings again: the videos are kept, not re-rendered
    stamp = {n: (out / "videos" / n).stat().st_mtime_ns for n in videos}
    res = runner.invoke(app, [*base, "--videos", "5", "--seed", "2", "--force"])
    assert res.exit_code == 0, res.output
    assert {n: (out / "videos" / n).stat().st_mtime_ns for n in videos} == stamp


def test_corpus_files_are_readable_by_all(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        synthetic.generate(tmp_path, SynthConfig(videos=2, size=32, min_frames=8, max_frames=8))
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2 + 5 and {p.stat().st_mode & 0o777 for p in files} == {0o644}
