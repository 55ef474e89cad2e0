"""Label-pipeline throughput against the bound its two stages set, measured in one run.

    .venv/bin/python bench/bench_pipeline.py            # 200 clips, 2 CPUs
    .venv/bin/python bench/bench_pipeline.py --videos 400 --cpus 4 --actors 2

Three measurements on one local Ray with `--cpus` CPUs, same clips, same settings:

1. decode only: the CPU stage (fetch, decode 8 sampled frames, resize + crop) alone;
2. model only: the model actor stage alone, on clips decoded beforehand;
3. the whole `tsm label` job (`run_label`: listing, resume check, both stages,
   Parquet parts, MLflow run).

Both stages share the same cores, so a perfect pipeline spends, per video, the
core-time of a decode plus that of a forward pass: its rate is the harmonic
combination 1 / (1/decode_rate + 1/model_rate) of the stage rates measured
with the whole machine each. Rates are "steady state": videos per second
between 30 % and 90 % of the videos coming out (STEADY), which leaves out Ray
start-up, actor model loading, the backlog of clips decoded while the actors
were starting, and the tail of the last batches (whole-run rates are reported
too). Each measurement is repeated (`--repeats`, medians reported).

Wall-clock rates need the CPUs to themselves: on a machine shared with other
work, a run with more busy processes (the pipeline) gets a larger share of
the cores than one with fewer (a stage alone), which flatters the pipeline.
So the benchmark also reads the CPU time of the whole local Ray (driver,
GCS, raylet, workers: this process's tree in /proc) over the same steady
windows: CPU seconds per video for each stage and for the pipeline. Their
ratio, (decode + model) / pipeline, is the pipeline's efficiency on dedicated
cores, unaffected by what else runs on the machine.

The corpus (10 s, 640x360, 30 fps, H.264 with B-frames, noisy test pattern so
the encoder has real work to do) is made once with ffmpeg and cached.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proctree import tree_cpu_seconds  # noqa: E402

from jobs.console import stderr_to  # noqa: E402
from pipeline.contract import RunStamp  # noqa: E402
from pipeline.decode_stage import DecodeSpec  # noqa: E402
from pipeline.job import decode_tasks, model_actors, run_label  # noqa: E402
from pipeline.listing import INPUT_SCHEMA, list_inputs  # noqa: E402
from pipeline.model_stage import ModelSpec  # noqa: E402
from pipeline.settings import LabelConfig  # noqa: E402

# the steady-state window, as fractions of the videos out: the first 30 % covers Ray
# start-up, the actors loading the model, and (in the pipeline) the actors draining the
# clips decoded while they were starting, which would flatter the pipeline's rate
STEADY = (0.3, 0.9)

# a light production-style model: MobileNetV2 TSM, 8 segments, 112 px crops of 128 px frames
MODEL = dict(arch="mobilenetv2", num_classes=10, num_segments=8, input_size=112, resize_size=128)


@dataclass
class Timed:
    """Output arrivals of one run: (seconds since start, videos done, CPU seconds used)."""

    marks: list[tuple[float, int, float]]
    total: int
    wall_s: float

    def _window(self, lo: float, hi: float) -> tuple[int, int] | None:
        n = np.array([m[1] for m in self.marks])
        i = int(np.searchsorted(n, lo * self.total))
        j = int(np.searchsorted(n, hi * self.total))
        if j <= i or j >= len(self.marks) or self.marks[j][0] <= self.marks[i][0]:
            return None
        return i, j

    def steady_rate(self, lo: float = STEADY[0], hi: float = STEADY[1]) -> float:
        """Videos/s between the batches that cross lo and hi of the total."""
        w = self._window(lo, hi)
        if w is None:
            return self.total / self.wall_s
        (t0, n0, _), (t1, n1, _) = self.marks[w[0]], self.marks[w[1]]
        return (n1 - n0) / (t1 - t0)

    def steady_cpu_per_video(self, lo: float = STEADY[0], hi: float = STEADY[1]) -> float:
        """CPU seconds (whole process tree) per video over the same window."""
        w = self._window(lo, hi)
        (_, n0, c0), (_, n1, c1) = (
            (self.marks[0], self.marks[-1]) if w is None else (self.marks[w[0]], self.marks[w[1]])
        )
        return (c1 - c0) / max(n1 - n0, 1)

    @property
    def whole_rate(self) -> float:
        return self.total / self.wall_s


def make_corpus(directory: Path, count: int, seconds: int, size: str, jobs: int) -> list[Path]:
    """`count` distinct clips (different pattern offsets and noise seeds), made once."""
    directory.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> Path:
        path = directory / f"clip{i:04d}.mp4"
        if path.exists() and path.stat().st_size > 0:
            return path
        tmp = path.with_suffix(".tmp.mp4")
        src = f"testsrc2=size={size}:rate=30:duration={seconds}"
        vf = f"hue=h={(i * 37) % 360},noise=alls=12:allf=t+u:all_seed={i}"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src,
             "-vf", vf, "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
             str(tmp)],
            check=True,
        )
        tmp.rename(path)
        return path

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, range(count)))


def make_model(directory: Path) -> Path:
    import torch

    import tsm_model

    torch.manual_seed(0)
    return tsm_model.save(tsm_model.build(tsm_model.TSMConfig(**MODEL)), directory / "model")


def consume(ds, total: int) -> Timed:
    """Pull every batch through `ds`, timing arrivals on the driver."""
    start = time.monotonic()
    marks, done = [], 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
        done += batch.num_rows
        marks.append((time.monotonic() - start, done, tree_cpu_seconds()))
    return Timed(marks, done, time.monotonic() - start)


def label_config(args, videos: Path, out: Path, model: Path) -> LabelConfig:
    return LabelConfig(
        input=str(videos), output=str(out), model=str(model),
        batch_size=args.batch_size, actors=args.actors, torch_threads=args.torch_threads,
        videos_per_decode_task=args.videos_per_task,
    )


def pure_work(todo, pre, inf, sample: int) -> tuple[float, float]:
    """CPU seconds per video of the two stages' own work, in this process, without Ray:
    fetch + decode + crop of `sample` videos, and the forward pass over their clips."""
    import torch

    from pipeline.decode_stage import ClipResult, results_table
    from pipeline.fetch_decode import fetch_decode
    from pipeline.model_stage import ClipClassifier
    from pipeline.transforms import resize_crop

    objs = todo[:sample]
    threads = torch.get_num_threads()
    # as in Ray's 1-CPU tasks (OMP_NUM_THREADS=1): one thread for the resize, no spinning
    torch.set_num_threads(1)
    c0 = time.process_time()
    results = []
    for o in objs:  # what the decoding child and then the task do, here in one process
        decoded = fetch_decode(o, pre.job)
        clip = resize_crop(decoded.frames, pre.resize_size, pre.input_size)
        results.append(ClipResult(o, clip=clip, video=decoded.video))
    decode = (time.process_time() - c0) / len(objs)
    clf = ClipClassifier(inf)  # sets torch threads as the actors do
    batch = results_table(results)
    clf(batch)  # warm-up
    c0 = time.process_time()
    clf(batch)
    model = (time.process_time() - c0) / len(objs)
    torch.set_num_threads(threads)
    return decode, model


def measure(r: int, args, todo, pre, inf, config, work: Path, videos: Path, model: Path) -> dict:
    """One round: decode only, model only, whole pipeline; steady and whole-run rates."""
    import ray.data

    n = len(todo)
    # 1. decode only: the job's CPU stage, consumed directly
    decoded = []
    start = time.monotonic()
    marks, done = [], 0
    inputs = pa.table({"uri": [o.uri for o in todo], "version": [o.version for o in todo],
                       "size": [o.size for o in todo], "error_kind": [None] * n,
                       "error_message": [None] * n}, schema=INPUT_SCHEMA)
    blocks = [inputs.slice(i, config.videos_per_decode_task)
              for i in range(0, n, config.videos_per_decode_task)]
    for batch in decode_tasks(ray.data.from_arrow(blocks), pre,
                              config.videos_per_decode_task).iter_batches(
        batch_size=None, batch_format="pyarrow", prefetch_batches=2
    ):
        decoded.append(batch)
        done += batch.num_rows
        marks.append((time.monotonic() - start, done, tree_cpu_seconds()))
    decode = Timed(marks, done, time.monotonic() - start)
    ok = sum(b["error_kind"].null_count for b in decoded)
    assert ok == n, f"only {ok} of {n} clips decoded"

    # 2. model only: the job's model stage on those clips, already in the object store
    clips = ray.data.from_arrow(decoded).repartition(max(1, n // 8)).materialize()
    del decoded
    model_only = consume(model_actors(clips, inf, config, config.shares()), n)
    del clips

    # 3. the whole job, into a fresh output (or resume would skip everything)
    marks = []
    start_box = {}

    def on_start(p):
        start_box["t"] = time.monotonic()

    def on_progress(p):
        marks.append((time.monotonic() - start_box["t"], p.done, tree_cpu_seconds()))

    cfg = label_config(args, videos, work / f"out{r}", model)
    summary = run_label(cfg, on_start=on_start, on_progress=on_progress)
    assert summary.ok == n, summary.errors
    pipe = Timed(marks, summary.processed, marks[-1][0])
    out = {
        "decode": decode.steady_rate(), "decode_whole": decode.whole_rate,
        "decode_cpu": decode.steady_cpu_per_video(),
        "model": model_only.steady_rate(), "model_whole": model_only.whole_rate,
        "model_cpu": model_only.steady_cpu_per_video(),
        "pipeline": pipe.steady_rate(), "pipeline_whole": pipe.whole_rate,
        "pipeline_cpu": pipe.steady_cpu_per_video(),
        "job_wall_s": summary.wall_time_s,
    }
    print(f"round {r}: " + ", ".join(f"{k} {v:.2f}" for k, v in out.items()), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--videos-per-task", type=int, default=4)
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "tsm-labeller" / "bench",
                        help="where the generated clips are kept between runs")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians reported")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import ray
    import ray.data

    import tsm_model

    t0 = time.monotonic()
    clips = make_corpus(args.cache / f"clips-{args.size}-{args.seconds}s", args.videos,
                        args.seconds, args.size, jobs=args.cpus)
    print(f"corpus: {len(clips)} clips in {args.cache} ({time.monotonic() - t0:.0f} s)",
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    videos = work / "videos"
    videos.mkdir()
    for c in clips[: args.videos]:
        os.symlink(c, videos / c.name)
    model = make_model(work)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"

    config = label_config(args, videos, work / "out", model)
    model_cfg = tsm_model.load_config(model)
    pre = DecodeSpec.from_settings(model_cfg, config)
    inf = ModelSpec.from_settings(model_cfg, (model / "model.safetensors").read_bytes(),
                                  RunStamp("bench", "0", "bench", config.sampling,
                                           model_cfg.num_segments), config, config.shares())
    todo = list_inputs(str(videos)).entries
    n = len(todo)
    # before Ray starts: its background threads in this process would count as work
    pure_d, pure_m = pure_work(todo, pre, inf, sample=min(20, n))

    with stderr_to(work / "stderr.log"):
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)

    log_path = work / "stderr.log"
    load_before = os.getloadavg()
    rounds = []
    for r in range(1, args.repeats + 1):
        with stderr_to(log_path):  # Ray's and MLflow's start-up lines, not the table
            rounds.append(measure(r, args, todo, pre, inf, config, work, videos, model))

    def med(key: str) -> float:
        return float(np.median([x[key] for x in rounds]))

    d, m, p = med("decode"), med("model"), med("pipeline")
    cd, cm, cp = med("decode_cpu"), med("model_cpu"), med("pipeline_cpu")
    bound = 1.0 / (1.0 / d + 1.0 / m)
    cpu_bound = args.cpus / (cd + cm)
    results = {
        "videos": n, "cpus": args.cpus, "actors": args.actors, "repeats": args.repeats,
        "torch_threads": args.torch_threads, "batch_size": args.batch_size,
        "videos_per_decode_task": args.videos_per_task, "clip": f"{args.seconds}s {args.size}",
        "decode_rate": d, "model_rate": m, "bound": bound, "pipeline_rate": p,
        "ratio": p / bound, "decode_cpu_s": cd, "model_cpu_s": cm, "pipeline_cpu_s": cp,
        "cpu_bound": cpu_bound, "cpu_efficiency": (cd + cm) / cp,
        "pure_decode_cpu_s": pure_d, "pure_model_cpu_s": pure_m,
        "rounds": rounds, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "host": f"{platform.machine()}, {os.cpu_count()} cores visible",
    }
    lb, la = results["loadavg_before"], results["loadavg_after"]
    print()
    print(f"{n} clips ({args.seconds} s, {args.size}), {args.cpus} Ray CPUs, median of "
          f"{args.repeats} rounds (each: decode, model, pipeline in turn); 1-min load average "
          f"{lb[0]:.1f} before, {la[0]:.1f} after")
    print()
    print("| measurement | videos/s steady (median) | per round | whole run, per round "
          "| CPU s / video (median) |")
    print("| --- | ---: | --- | --- | ---: |")

    def row(label: str, key: str, value: float, cpu: float) -> None:
        per = ", ".join(f"{x[key]:.2f}" for x in rounds)
        whole = ", ".join(f"{x[key + '_whole']:.2f}" for x in rounds)
        print(f"| {label} | {value:.2f} | {per} | {whole} | {cpu:.3f} |")

    row(f"decode only (CPU stage, {args.cpus} CPUs)", "decode", d, cd)
    row(f"model only ({args.actors} actors x {args.torch_threads} thread)", "model", m, cm)
    print(f"| stage bound 1/(1/decode + 1/model) | {bound:.2f} | "
          + ", ".join(f"{1 / (1 / x['decode'] + 1 / x['model']):.2f}" for x in rounds)
          + f" | | {cd + cm:.3f} |")
    row("whole pipeline (`run_label`)", "pipeline", p, cp)
    print(f"| pipeline / stage bound | {p / bound:.0%} | "
          + ", ".join(f"{x['pipeline'] / (1 / (1 / x['decode'] + 1 / x['model'])):.0%}"
                      for x in rounds) + " | | |")
    print()
    print(f"CPU view: the stages need {cd:.3f} + {cm:.3f} = {cd + cm:.3f} CPU s per video, so "
          f"{args.cpus} dedicated CPUs bound the rate at {cpu_bound:.2f} videos/s; the pipeline "
          f"spends {cp:.3f} CPU s per video (stage work / pipeline work = "
          f"{(cd + cm) / cp:.0%}), i.e. at most {args.cpus / cp:.2f} videos/s on "
          f"{args.cpus} dedicated CPUs ({(cd + cm) / cp:.0%} of the bound).")
    pure = pure_d + pure_m
    print(f"Without Ray (one process, {min(20, n)} clips): decode {pure_d:.3f} + model "
          f"{pure_m:.3f} = {pure:.3f} CPU s per video, a bound of {args.cpus / pure:.2f} "
          f"videos/s on {args.cpus} CPUs; the pipeline's {cp:.3f} CPU s per video is "
          f"{pure / cp:.0%} of that (the rest is Ray, the driver and the Parquet writing).")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
