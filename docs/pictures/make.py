"""The pictures in the README and docs/, made from the code itself.

From the repository root, with `.venv` set up (`make test` does it)::

    .venv/bin/python docs/pictures/make.py                 # all four (about 3 minutes on 2 cores)
    .venv/bin/python docs/pictures/make.py classes pipeline  # some of them (names below)
    .venv/bin/python docs/pictures/make.py predictions --videos 50 --seed 11

    # a throughput bar chart from bench/bench_vs_baselines.py's results (its --json file)
    .venv/bin/python docs/pictures/make.py throughput bench-vs-baselines.json \\
        --out docs/pictures/throughput.png

The pictures (PNG, under docs/pictures/):

- `classes`: synthetic_classes.png, the contact sheet of the synthetic
  corpus: one row per class, frames across time; the two rows of a pair show
  the same scene (same seed), the second played backwards;
- `pipeline`: pipeline.png, how `tsm label` runs: the driver, listing,
  decode tasks, model actors, part writers, the Parquet output and the run
  record;
- `predictions`: predictions.png and confusion.png. The bundled model labels
  a fresh synthetic corpus (`--videos`, default 100, `--seed`, default 11,
  not the training seed 2019) through the real label job (local Ray, its
  decode tasks, model actors and Parquet parts; MLflow in a temporary
  folder); predictions.png shows sampled frames of one video per class
  with the true label and the top-1 label and score read back from the
  Parquet rows, confusion.png the confusion matrix over the whole corpus
  (`training.evaluation.plot_confusion`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PICTURES = ("classes", "pipeline", "predictions")

INK = "#222222"
MUTED = "#666666"
BLUE, GREEN, ORANGE, PURPLE, GREY = "#dbe8f7", "#dff1df", "#fde9d3", "#ebe2f4", "#eeeeee"


def _save(fig, path: Path, dpi: int = 100) -> Path:
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
          f"({path.stat().st_size / 1024:.0f} KB)")
    return path


# ------------------------------------------------------------------ the synthetic classes
def classes_sheet(path: Path = HERE / "synthetic_classes.png", frames: int = 7,
                  seeds: tuple[int, ...] = (11, 23, 5, 42, 9)) -> Path:
    """One row per class, `frames` frames across time; a pair's rows share a scene."""
    import numpy as np

    from training.synthetic import CLASSES, VideoSpec, render

    length = 40
    idx = np.linspace(0, length - 1, frames).round().astype(int)
    fig, axes = plt.subplots(len(CLASSES), frames, figsize=(1.05 * frames + 2.3, 10.4))
    for row, label in enumerate(CLASSES):
        seed = seeds[row // 2]  # the same scene for both members of a pair
        video = render(VideoSpec(label, seed=seed, size=96, num_frames=length, fps=20))
        for col, t in enumerate(idx):
            ax = axes[row, col]
            ax.imshow(video[t], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_edgecolor("#bbbbbb")
            if row == 0:
                ax.set_title(f"frame {t}", fontsize=8, color=MUTED)
        axes[row, 0].set_ylabel(label.replace("_", " "), rotation=0, ha="right", va="center",
                                fontsize=9.5, labelpad=8)
        if row % 2 == 1:  # the backward member: the row above, reversed
            axes[row, 0].text(-0.1, 0.3, "= the row above\nplayed backwards",
                              transform=axes[row, 0].transAxes, ha="right", va="top",
                              fontsize=7.5, color=MUTED)
    fig.suptitle("The synthetic corpus: 10 classes in 5 exactly time-reversed pairs\n"
                 "(each pair: one scene, the second row is the first played backwards; "
                 "a frame-order-blind model cannot tell them apart)", fontsize=9.5)
    fig.subplots_adjust(left=0.19, right=0.99, top=0.92, bottom=0.01, wspace=0.06,
                        hspace=0.08)
    for pair in range(1, len(CLASSES) // 2):  # a gap line between pairs
        y = axes[2 * pair, 0].get_position().y1 + 0.004
        fig.add_artist(plt.Line2D([0.03, 0.99], [y, y], color="#cccccc", lw=0.8))
    return _save(fig, path, dpi=90)


# ------------------------------------------------------------------ the pipeline
def _box(ax, x, y, w, h, title, lines, colour, *, title_size=9.5, text_size=7.8):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.005,rounding_size=0.012",
                                fc=colour, ec="#8a8a8a", lw=0.9))
    if title:
        ax.text(x + w / 2, y + h - 0.025, title, ha="center", va="top", fontsize=title_size,
                weight="bold", color=INK)
    ax.text(x + w / 2, y + h - 0.072, "\n".join(lines), ha="center", va="top",
            fontsize=text_size, color=INK, linespacing=1.4)


def _arrow(ax, start, end, text="", *, colour=INK, dashed=False, dx=0.0, dy=0.012):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11, lw=1.1,
                                 color=colour, linestyle=(0, (3, 2)) if dashed else "-",
                                 shrinkA=3, shrinkB=3))
    if text:
        ax.text((start[0] + end[0]) / 2 + dx, (start[1] + end[1]) / 2 + dy, text,
                ha="center", va="bottom", fontsize=7.2, color=MUTED)


def pipeline_diagram(path: Path = HERE / "pipeline.png") -> Path:
    """`tsm label` drawn: who does what, and what flows where."""
    fig = plt.figure(figsize=(11, 5.4))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")

    # the driver, across the top
    ax.add_patch(FancyBboxPatch((0.01, 0.665), 0.98, 0.32,
                                boxstyle="round,pad=0.004,rounding_size=0.012",
                                fc="#f6f6f6", ec="#8a8a8a", lw=0.9))
    ax.text(0.02, 0.965, "driver: the tsm label process (one machine)", fontsize=9.5,
            weight="bold", va="top", color=INK)
    top, h = 0.685, 0.235
    driver = [
        ("1  plan", ["model URI -> files, name, version", "Parquet schema of the output",
                     "(--dry-run prints it and stops)"]),
        ("2  lease on the output", ["one run writes an output at a time", "a dead run's lease is",
                                    "taken over; its parts fenced off"]),
        ("3  listing + resume filter", ["folder, s3:// prefix or manifest",
                                        "in chunks, on a thread,",
                                        "minus what this model version did"]),
        ("4  watch and record", ["progress: the actors' tally", "stall guard; one MLflow run",
                                 "(its id is in every row)"]),
    ]
    for i, (title, lines) in enumerate(driver):
        _box(ax, 0.025 + i * 0.245, top, 0.22, h, title, lines, "#e9e9e9", title_size=8.8)

    # the Ray Data stream
    y, h = 0.255, 0.3
    stream = [
        ("read tasks", ["cut the listing's", "chunks into blocks", "of 4 videos"], BLUE),
        ("decode tasks", ["1 CPU each: fetch, decode", "the N sampled frames,",
                          "resize + crop (uint8);", "in a child process: a crash",
                          "or hang is one error row"], GREEN),
        ("model actors", ["a pool (--actors), GPU or CPU;", "weights loaded once;",
                          "top-k + embedding in", "one backbone pass"], ORANGE),
        ("part writers", ["Parquet parts of up to", "10,000 rows / ~64 MB,", "named by their rows,",
                          "published whole"], PURPLE),
    ]
    xs = [0.02, 0.265, 0.52, 0.775]
    ws = [0.18, 0.205, 0.205, 0.175]
    for x, w, (title, lines, colour) in zip(xs, ws, stream, strict=True):
        _box(ax, x, y, w, h, title, lines, colour)
    mid = y + h / 2
    for (x0, w0), x1, text in zip(zip(xs, ws, strict=True), xs[1:], ["videos", "clips", "rows"],
                                  strict=False):
        _arrow(ax, (x0 + w0, mid), (x1, mid), text)
    ax.text(0.02, 0.215, "Ray Data: tasks and actors stream on any node of the cluster",
            fontsize=8, color=MUTED, style="italic", va="top")

    # the output
    _box(ax, 0.52, 0.025, 0.46, 0.15, "OUT/<model>/<version>/", [
        "part-<run id>-<digest>.parquet: one row per video (labels, scores,",
        "embedding, what was decoded) or an error row saying why",
        "_runs/<run id>.json: the run record, written last"], "#fff5cc", title_size=9,
        text_size=7.6)

    _arrow(ax, (0.6, top), (0.11, y + h), "chunks of videos still to label", dx=-0.04,
           dy=-0.05)
    _arrow(ax, (0.8625, y), (0.8625, 0.175), "parts", dx=0.025, dy=-0.01)
    _arrow(ax, (0.65, y + h), (0.8, top), "tally", colour=MUTED, dashed=True, dx=-0.03)
    _arrow(ax, (0.86, y + h), (0.9, top), "part names", colour=MUTED, dashed=True, dx=0.04)
    _arrow(ax, (0.972, top), (0.972, 0.175), "record", colour=MUTED, dashed=True, dx=0.0,
           dy=0.0)
    ax.text(0.02, 0.16, "The driver never holds a row: the workers write the parts; it lists,\n"
            "filters, counts, keeps the lease and writes the run record last.\n"
            "A video that fails anywhere becomes an error row, and a rerun\n"
            "labels only what no committed part holds for this model version.",
            fontsize=8, color=INK, va="top", linespacing=1.45)
    return _save(fig, path, dpi=100)


# ------------------------------------------------------------------ the bundled model at work
def _label_corpus(work: Path, videos: int, seed: int):
    """A synthetic corpus labelled by the bundled model with the real label job."""
    import torch  # noqa: F401  (before decord, which the label job's stages import)

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    import tsm_model
    from pipeline.job import run_label
    from pipeline.settings import LabelConfig
    from training.clip_dataset import read_labelled_manifest
    from training.evaluation import read_predictions
    from training.synthetic import SynthConfig, combine_manifests, generate, plan

    config = SynthConfig(videos=videos, seed=seed)
    manifest = combine_manifests(generate(work / "corpus", config), work / "labels.csv")
    print(f"labelling {videos} synthetic videos (seed {seed}) with the bundled model ...")
    summary = run_label(LabelConfig(input=str(manifest), output=str(work / "out"),
                                    model=str(tsm_model.BUNDLED), embeddings=False))
    rows = read_predictions(str(work / "out"), summary.model_name, summary.model_version)
    specs = {str(work / "corpus" / "videos" / f"{i:05d}.mp4"): spec
             for i, (spec, _) in enumerate(plan(config))}
    return read_labelled_manifest(manifest), rows, specs, summary


def predictions_pictures(videos: int = 100, seed: int = 11,
                         predictions: Path = HERE / "predictions.png",
                         confusion: Path = HERE / "confusion.png") -> list[Path]:
    """Sampled frames with predicted and true labels; the confusion matrix."""
    import numpy as np
    import pyarrow.parquet as pq

    import tsm_model
    from training.evaluation import plot_confusion, score
    from training.synthetic import CLASSES, render

    with tempfile.TemporaryDirectory(prefix="tsm-pictures-") as tmp:
        work = Path(tmp)
        labelled, rows, specs, summary = _label_corpus(work, videos, seed)
        frame_indices = {}
        for part in summary.parts:
            t = pq.read_table(part, columns=["video_uri", "frame_indices"])
            frame_indices.update(zip(t["video_uri"].to_pylist(),
                                     t["frame_indices"].to_pylist(), strict=True))
    classes = list(tsm_model.load_config(tsm_model.BUNDLED).class_names)
    top1, _, _, errors, matrix, _ = score(labelled, rows, classes)
    n_err = sum(errors.values())
    plot_confusion(matrix, classes, confusion,
                   f"bundled model on {len(labelled)} new synthetic videos (seed {seed}): "
                   f"top-1 {top1:.3f}" + (f", {n_err} error rows" if n_err else ""))
    print(f"wrote {confusion.relative_to(ROOT)} ({confusion.stat().st_size / 1024:.0f} KB)")

    # one video per class, in class order, then the first miss (if any); 4 of the frames
    # the job sampled
    examples = {}
    for uri, label in sorted(labelled):
        examples.setdefault(label, uri)
    chosen = [(label, examples[label]) for label in CLASSES]
    misses = [(label, uri) for uri, label in sorted(labelled)
              if (rows.get(uri) or {}).get("top_k_labels", [None])[0] != label]
    chosen += misses[:1]
    shown = 4
    fig, axes = plt.subplots(len(chosen), shown, figsize=(6.9, 1.3 * len(chosen) + 0.4))
    for row, (label, uri) in enumerate(chosen):
        frames = render(specs[uri])
        sampled = frame_indices[uri]
        pick = [sampled[i] for i in np.linspace(0, len(sampled) - 1, shown).round().astype(int)]
        r = rows.get(uri)
        ok = r is not None and r["status"] == "ok"
        guess, p = (r["top_k_labels"][0], r["top_k_scores"][0]) if ok else ("error", 0.0)
        for col, t in enumerate(pick):
            ax = axes[row, col]
            ax.imshow(frames[t], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"frame {t}", fontsize=6.5, color=MUTED, labelpad=1)
        right = guess == label
        axes[row, 0].set_title(
            ("a miss:  " if row >= len(CLASSES) else "")
            + f"true: {label}    predicted: {guess} ({p:.2f})  {'✓' if right else '✗'}",
            loc="left", fontsize=8.5, color="#1b7a1b" if right else "#b22222")
    fig.suptitle(f"The bundled model through the label job on {len(labelled)} new synthetic "
                 f"videos:\nthe first video of each class{', and the first miss' if misses else ''}"
                 " (frames the job sampled;\nlabels and scores read back from the Parquet rows)",
                 fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 1.05 / fig.get_figheight(),
                        bottom=0.01, hspace=0.42, wspace=0.05)
    return [confusion, _save(fig, predictions, dpi=85)]


# ------------------------------------------------------------------ benchmark results
def throughput_chart(results: str | Path, path: str | Path = HERE / "throughput.png") -> Path:
    """A bar chart of bench/bench_vs_baselines.py's results (its --json file).

    One bar per method (median videos/s), each round as a dot, and how many
    times faster or slower ours is than each baseline; the corpus, model,
    CPUs and machine in the title.
    """
    data = json.loads(Path(results).read_text())
    summary = data["summary"]
    methods = list(summary)
    names = {"plain": "plain loop\n(decord + torch)", "ray": "textbook\nRay Data job",
             "ours": "tsm label"}
    colours = {"plain": "#9db4d0", "ray": "#b9a3d1", "ours": "#e39a4c"}
    fig, ax = plt.subplots(figsize=(6.4, 3.9))
    for i, m in enumerate(methods):
        s = summary[m]
        ax.bar(i, s["videos_per_s"], width=0.6, color=colours.get(m, "#bbbbbb"),
               edgecolor="#555555", lw=0.7)
        rounds = s.get("per_round", [])
        ax.scatter([i] * len(rounds), rounds, s=12, color=INK, zorder=3,
                   label="each round" if i == 0 else None)
        label = f"{s['videos_per_s']:.2f}"
        if m != "ours" and "ours_over_this" in s:
            label += f"\n(tsm label: {s['ours_over_this']:.2f}x)"
        ax.text(i, max([s["videos_per_s"], *rounds]) * 1.03, label, ha="center", va="bottom",
                fontsize=8)
    ax.set_xticks(range(len(methods)), [names.get(m, m) for m in methods], fontsize=8.5)
    ax.set_ylabel("videos / s (median; start-up included)", fontsize=8.5)
    ax.set_ylim(0, max(max([summary[m]["videos_per_s"], *summary[m].get("per_round", [])])
                       for m in methods) * 1.35)
    corpus, model = data.get("corpus", {}), data.get("model", {})
    clips = (f"{corpus.get('videos')} clips of {corpus.get('duration_s'):g} s"
             if corpus.get("duration_s") else f"{corpus.get('videos')} videos")
    arch = model.get("config", {}).get("arch", "")
    cpu = data.get("machine", {}).get("cpu_model", "")
    ax.set_title(f"Labelling {clips}, model {model.get('name')} ({arch}), "
                 f"{data.get('cpus')} CPUs each\n{cpu}", fontsize=8.5)
    ax.spines[["top", "right"]].set_visible(False)
    if any(summary[m].get("per_round") for m in methods):
        ax.legend(fontsize=7.5, frameon=False, loc="upper left")
    fig.tight_layout()
    return _save(fig, Path(path), dpi=110)


# ------------------------------------------------------------------ command line
def main(argv: list[str]) -> None:
    if argv[:1] == ["throughput"]:
        p = argparse.ArgumentParser(prog="make.py throughput",
                                    description=throughput_chart.__doc__.split("\n")[0])
        p.add_argument("results", type=Path, help="the JSON file bench_vs_baselines.py wrote")
        p.add_argument("--out", type=Path, default=HERE / "throughput.png")
        args = p.parse_args(argv[1:])
        throughput_chart(args.results, args.out)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="`make.py throughput RESULTS.json [--out PNG]` draws "
                                "the benchmark chart.")
    p.add_argument("pictures", nargs="*", metavar="PICTURE",
                   help=f"any of {', '.join(PICTURES)} (default: all)")
    p.add_argument("--videos", type=int, default=100, help="predictions: corpus size")
    p.add_argument("--seed", type=int, default=11, help="predictions: corpus seed")
    args = p.parse_args(argv)
    unknown = sorted(set(args.pictures) - set(PICTURES))
    if unknown:
        p.error(f"no picture called {', '.join(unknown)}; choose from {', '.join(PICTURES)}")
    chosen = args.pictures or list(PICTURES)
    if "classes" in chosen:
        classes_sheet()
    if "pipeline" in chosen:
        pipeline_diagram()
    if "predictions" in chosen:
        predictions_pictures(args.videos, args.seed)


if __name__ == "__main__":
    main(sys.argv[1:])
