"""What keyframe sampling costs in accuracy, on the synthetic temporal benchmark (issue 10, item 6).

    # the bundled model on its held-out test split (300 videos), 3 encodings x 2 samplings
    .venv/bin/python bench/sampling_accuracy.py

    # more videos: 1000 new ones (another seed: the model saw none of them)
    .venv/bin/python bench/sampling_accuracy.py --seed 7 --videos 1000 --split all

    # another model (a folder or models:/NAME@ALIAS), the results file where you want it
    .venv/bin/python bench/sampling_accuracy.py --model path/to/model --json /tmp/acc.json

    # then fine-tune the model 4 epochs on the corpus's training split (segment-random
    # sampling, as `tsm train` always does) and measure the fine-tuned model the same way
    .venv/bin/python bench/sampling_accuracy.py --finetune 4

The test set: by default the test split of the bundled model's own corpus
(`tsm data synth synth2000 --videos 2000 --seed 2019`, see
tsm_model/bundled/README.md): 300 videos (30 per class) it never saw in
training or validation. Only that split is rendered (`training.synthetic.plan`
and `render`, the generator's own code), and each video is encoded three
times with the corpus's x264 settings (`training.synthetic.encode_mp4`:
preset veryfast, CRF 18, B-frames on, x264's defaults otherwise):

* `as-made`: exactly as `tsm data synth` writes it (x264's default GOP: a
  keyframe at most every 250 frames, so a clip of 24-64 frames has one, at
  frame 0, unless a scene cut adds one);
* `gop-1s`: a keyframe every second (`-g FPS -keyint_min FPS -sc_threshold 0`,
  FPS the clip's own rate, 12-30);
* `gop-2s`: a keyframe every 2 seconds, as phone and streaming encoders write.

Each encoding is evaluated twice with `training.evaluation.evaluate` (the
real label job, then scored against the labels): `--sampling uniform` (each
segment's centre) and `--sampling keyframe` (each segment's cheapest frame:
a keyframe inside it if there is one, else its first frame). Reported per
encoding and sampling: top-1, top-5, the keyframe - uniform difference, the
videos right under one sampling only (the paired difference: the same videos,
so these counts, not the two top-1 figures' own noise, say whether a
difference is real), frames decoded per video and how far the sampled frames
are from the segment centres.

With `--finetune EPOCHS` the whole corpus is made too (`tsm data synth
--videos V --seed S`: its train and val splits), the model is fine-tuned on
it with `training.train_job.train` (what `tsm train --init MODEL` runs:
a random frame inside each segment per clip, `--lr`, `--seed`, the best
validation epoch kept, nothing registered) and the fine-tuned model is
evaluated on the same test videos in the same way.

Everything is written under `--work` (default: a folder in /tmp, kept; a
second run reuses the videos): `videos/<encoding>/NNNNN.mp4`, one manifest per
encoding, the label outputs, and MLflow's runs in `mlflow.db` there (not the
repository's). The report goes to stdout as markdown and to `--json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the project's packages are one folder up
    sys.path.insert(0, str(ROOT))

ENCODINGS = {"as-made": None, "gop-1s": 1.0, "gop-2s": 2.0}  # keyframe every N s
SAMPLINGS = ("uniform", "keyframe")


def _encode_one(job: tuple) -> str:
    """Render one video (the generator's code) and write each encoding of it that is missing."""
    from training.synthetic import encode_mp4, render

    spec, targets, crf = job
    missing = [(p, s) for p, s in targets if not Path(p).exists()]
    if missing:
        frames = render(spec)
        for path, seconds in missing:
            gop = None if seconds is None else max(1, round(seconds * spec.fps))
            encode_mp4(frames, spec.fps, Path(path), crf, gop=gop)
    return spec.label


def make_test_set(work: Path, seed: int, videos: int, split: str, workers: int) -> dict:
    """Render `split` of the corpus (`tsm data synth --videos V --seed S`) in every encoding;
    returns {encoding: manifest path}."""
    from training.synthetic import SynthConfig, plan

    config = SynthConfig(videos=videos, seed=seed)
    chosen = [(i, spec) for i, (spec, s) in enumerate(plan(config)) if split in ("all", s)]
    jobs = []
    for i, spec in chosen:
        targets = [(str(work / "videos" / enc / f"{i:05d}.mp4"), seconds)
                   for enc, seconds in ENCODINGS.items()]
        jobs.append((spec, targets, config.crf))
    for enc in ENCODINGS:
        (work / "videos" / enc).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_encode_one, jobs, chunksize=4))
    manifests = {}
    for enc in ENCODINGS:
        path = work / f"test-{enc}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["uri", "label"])
            w.writerows([str(work / "videos" / enc / f"{i:05d}.mp4"), spec.label]
                        for i, spec in chosen)
        manifests[enc] = path
    return manifests


def row_stats(output: str, model_name: str, model_version: str, sampling: str,
              num_segments: int) -> dict:
    """Decoding figures of one evaluation's rows: frames decoded per video, keyframes per
    video, and how far the sampled frames are from the segment centres (in frames and in
    segment lengths)."""
    import pyarrow.dataset as ds

    from pipeline.sampling import segment_indices

    table = ds.dataset(output, format="parquet").to_table(
        columns=["video_uri", "status", "sampling", "num_segments", "model_name",
                 "model_version", "frames_decoded", "frame_indices", "num_frames",
                 "processed_at"])
    latest: dict[str, dict] = {}
    for r in table.to_pylist():
        if (r["model_name"], r["model_version"], r["sampling"], r["num_segments"]) != (
                model_name, model_version, sampling, num_segments) or r["status"] != "ok":
            continue
        if r["video_uri"] not in latest or r["processed_at"] > latest[r["video_uri"]][
                "processed_at"]:
            latest[r["video_uri"]] = r
    rows = list(latest.values())
    offsets, shares = [], []
    for r in rows:
        centres = segment_indices(r["num_frames"], num_segments).tolist()
        seg = r["num_frames"] / num_segments
        for got, centre in zip(r["frame_indices"], centres, strict=True):
            offsets.append(abs(got - centre))
            shares.append(abs(got - centre) / seg)
    return {
        "videos": len(rows),
        "frames_decoded_per_video": statistics.mean(r["frames_decoded"] for r in rows),
        "frames_decoded_per_used": sum(r["frames_decoded"] for r in rows)
        / max(1, num_segments * len(rows)),
        "mean_frames_from_centre": statistics.mean(offsets),
        "mean_segments_from_centre": statistics.mean(shares),
        "share_at_centre": sum(o == 0 for o in offsets) / len(offsets),
    }


def keyframes_per_video(manifest: Path, limit: int = 10_000) -> float:
    """Mean number of keyframes per video of a manifest (from the container index)."""
    from pipeline.decoders.pyav import probe

    with open(manifest, newline="") as f:
        uris = [r["uri"] for r in csv.DictReader(f)][:limit]
    return statistics.mean(len(probe(u).keyframes or ()) for u in uris)


def evaluate_all(model: str, manifests: dict, work: Path) -> list[dict]:
    """Every encoding x sampling through `training.evaluation.evaluate`; one dict each."""
    import tsm_model
    from registry.versions import resolve_model
    from training.clip_dataset import read_labelled_manifest
    from training.evaluation import evaluate, read_predictions

    ref = resolve_model(model)
    segments = tsm_model.load_config(ref.path).num_segments
    results = []
    for enc, manifest in manifests.items():
        labels = dict(read_labelled_manifest(manifest))
        right: dict[str, set[str]] = {}
        for sampling in SAMPLINGS:
            out = str(work / "labels" / enc)
            t0 = time.monotonic()
            r = evaluate(model, str(manifest), out, sampling=sampling)
            seconds = time.monotonic() - t0
            preds = read_predictions(out, r.model_name, r.model_version, sampling=sampling,
                                     num_segments=segments)
            right[sampling] = {u for u, row in preds.items()
                               if row["status"] == "ok" and row["top_k_labels"]
                               and row["top_k_labels"][0] == labels[u]}
            stats = row_stats(out, r.model_name, r.model_version, sampling, segments)
            results.append({"encoding": enc, "sampling": sampling, "videos": r.num_videos,
                            "top1": r.top1, "top5": r.top5, "errors": r.errors,
                            "per_class": r.per_class, "mlflow_run": r.run_id,
                            "seconds": round(seconds, 1), **stats})
            print(f"{enc:<8} {sampling:<8} top-1 {r.top1:.4f}  top-5 {r.top5:.4f}  "
                  f"frames decoded/video {stats['frames_decoded_per_video']:.1f}  "
                  f"({seconds:.0f} s)", flush=True)
        only_u = len(right["uniform"] - right["keyframe"])
        only_k = len(right["keyframe"] - right["uniform"])
        for res in results[-2:]:
            res["right_only_uniform"], res["right_only_keyframe"] = only_u, only_k
    return results


def finetune(model: str, work: Path, args) -> Path:
    """Fine-tune `model` on the corpus's train split (val split picks the epoch); returns the
    best model's folder."""
    from registry.versions import resolve_model
    from training.synthetic import SynthConfig, generate
    from training.train_job import TrainConfig, train

    corpus = work / "corpus"
    t0 = time.monotonic()
    manifests = generate(corpus, SynthConfig(videos=args.videos, seed=args.seed,
                                             workers=args.workers))
    print(f"corpus for fine-tuning: {corpus} ({time.monotonic() - t0:.0f} s)", flush=True)
    out = work / f"finetune-e{args.finetune}-lr{args.lr:g}-s{args.train_seed}"
    t0 = time.monotonic()
    result = train(TrainConfig(train_manifest=manifests["train"],
                               val_manifest=manifests["val"], epochs=args.finetune,
                               lr=args.lr, seed=args.train_seed, out_dir=out,
                               init=resolve_model(model).path, register=False,
                               name="tsm-sampling-accuracy-finetune"))
    print(f"fine-tuned in {time.monotonic() - t0:.0f} s: best validation top-1 "
          f"{result.best_val_top1:.4f}; {result.best_dir}", flush=True)
    for epoch in result.history:
        print("  " + ", ".join(f"{k} {v:.4g}" for k, v in epoch.items()), flush=True)
    return Path(result.best_dir)


def report(results: list[dict], keyframes: dict[str, float], args, model_desc: str) -> str:
    lines = [
        "| encoding | keyframes / video | sampling | top-1 | top-5 | keyframe - uniform "
        "(top-1, points) | right only with uniform / keyframe | frames decoded / video | "
        "sampled frame to centre (frames; segments) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by = {(r["encoding"], r["sampling"]): r for r in results}
    for r in results:
        u = by[(r["encoding"], "uniform")]
        diff = (f"{100 * (r['top1'] - u['top1']):+.1f}" if r["sampling"] == "keyframe"
                else "")
        paired = (f"{r['right_only_uniform']} / {r['right_only_keyframe']}"
                  if r["sampling"] == "keyframe" else "")
        lines.append(
            f"| {r['encoding']} | {keyframes[r['encoding']]:.2f} | {r['sampling']} | "
            f"{r['top1']:.4f} | {r['top5']:.4f} | {diff} | {paired} | "
            f"{r['frames_decoded_per_video']:.1f} | {r['mean_frames_from_centre']:.2f}; "
            f"{r['mean_segments_from_centre']:.3f} |")
    n = results[0]["videos"]
    return "\n".join([
        f"{model_desc} on {n} synthetic videos ({args.split} split of `tsm data synth "
        f"--videos {args.videos} --seed {args.seed}`)", "", *lines])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "tsm_model" / "bundled"),
                   help="a model folder or models:/ URI (default: the bundled model)")
    p.add_argument("--seed", type=int, default=2019, help="corpus seed (default %(default)s)")
    p.add_argument("--videos", type=int, default=2000,
                   help="corpus size; the splits follow from it (default %(default)s)")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="test",
                   help="which videos of the corpus (default %(default)s)")
    p.add_argument("--work", type=Path,
                   default=Path(tempfile.gettempdir()) / "tsm-sampling-accuracy",
                   help="videos, manifests, outputs and mlflow.db (default %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="render/encode processes")
    p.add_argument("--finetune", type=int, default=0, metavar="EPOCHS",
                   help="then fine-tune the model this many epochs on the corpus's train split "
                        "and evaluate that too (default: no fine-tuning)")
    p.add_argument("--lr", type=float, default=3e-4, help="fine-tuning peak learning rate")
    p.add_argument("--train-seed", type=int, default=1, help="fine-tuning seed")
    p.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = p.parse_args()
    if args.finetune and args.split != "test":
        p.error("--finetune trains on the train split: measure on --split test")
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    work = args.work.resolve()
    work = work / f"seed{args.seed}-n{args.videos}-{args.split}"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    t0 = time.monotonic()
    manifests = make_test_set(work, args.seed, args.videos, args.split, args.workers)
    made_s = time.monotonic() - t0
    keyframes = {enc: keyframes_per_video(m) for enc, m in manifests.items()}
    print(f"test set: {work} ({made_s:.0f} s); keyframes per video: "
          + ", ".join(f"{e} {k:.2f}" for e, k in keyframes.items()), flush=True)

    import logging
    import warnings

    import ray

    # Ray Data's note on small inputs (fewer blocks than write tasks) says nothing here
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")

    import tsm_model
    from registry.versions import resolve_model

    # one local Ray for every evaluation (the label job uses it and leaves it running)
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        models = {args.model: evaluate_all(args.model, manifests, work)}
        if args.finetune:
            tuned = str(finetune(args.model, work, args))
            models[tuned] = evaluate_all(tuned, manifests, work)
    finally:
        ray.shutdown()
    tables = []
    for model, results in models.items():
        cfg = tsm_model.load_config(resolve_model(model).path)
        tables.append(report(results, keyframes, args, f"model {model} ({cfg.arch}, "
                                                       f"{cfg.num_segments} segments, "
                                                       f"{cfg.input_size} px)"))
    md = "\n\n".join(tables)
    load = os.getloadavg()
    print()
    print(md)
    print(f"\n- machine: nproc {os.cpu_count()}, Linux {platform.release()}, 1-min load "
          f"average {load[0]:.1f} at the end; started {started}\n- command: `{command}`")
    if args.json:
        args.json.write_text(json.dumps({
            "command": command, "started": started, "model": args.model,
            "corpus": {"seed": args.seed, "videos": args.videos, "split": args.split,
                       "work": str(work)},
            "keyframes_per_video": keyframes, "results": models, "markdown": md,
        }, indent=2))


if __name__ == "__main__":
    main()
