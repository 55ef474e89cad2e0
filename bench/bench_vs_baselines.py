"""Our whole `tsm label` job against what a user would write instead: same videos, model, CPUs.

How to run
----------
From a checkout with `.venv` set up and the baselines' decord installed (`make bench`), on a
quiet machine::

    # the benchmark: 120 upload-like 10 s clips (made once, cached), ResNet-18 TSM at 224 px
    .venv/bin/python bench/bench_vs_baselines.py

    # another model, more rounds, the results file where you want it
    .venv/bin/python bench/bench_vs_baselines.py --model mobilenetv2-224 --repeats 3 \\
        --json /tmp/vs-baselines.json

    # 5-minute videos (fewer of them: each takes long to make)
    .venv/bin/python bench/bench_vs_baselines.py --duration 300 --count 16

    # flags after `--` go to `tsm label` only (e.g. a sampling mode, once it exists)
    .venv/bin/python bench/bench_vs_baselines.py -- --sampling keyframe

    # your own videos and model: a manifest CSV with a `uri` column, a saved model folder
    .venv/bin/python bench/bench_vs_baselines.py --manifest videos.csv --model path/to/model

    # smoke test, a few minutes: 4 clips of 2 s at 320x180, the small bundled model
    .venv/bin/python bench/bench_vs_baselines.py --count 4 --duration 2 --sizes 320x180 \\
        --model bundled --repeats 1

It prints a markdown table (videos/s per method, ours / each baseline, the
machine, versions, the exact command) and writes the same as JSON
(`--json`, default `bench-vs-baselines-<time>.json` in the current folder).

What is compared
----------------
Three ways to label the same videos with the same model, each run as its own
fresh process, timed from process start to exit (what a user waits for:
interpreter and library imports, Ray start-up, model loading and the output
included):

* `plain`: `bench/baselines.py plain`, one Python process, decord + torch in a loop;
* `ray`: `bench/baselines.py ray`, the textbook Ray Data job
  (from_items -> map(decode) -> map_batches(actor pool) -> write_parquet);
* `ours`: `.venv/bin/tsm label MANIFEST --output OUT --model MODEL --no-progress`
  with its default flags (plus any flags given after `--`), driven through
  its command line, the interface that stays stable while the library changes.

Fairness
--------
* Same CPUs: every run is pinned to the same `--cpus` cores (the first ones
  this process may use; on a machine with exactly that many cores this
  changes nothing), and every method is told that count: the plain loop
  runs `--cpus` torch threads, the Ray Data job calls `ray.init(num_cpus=...)`,
  and our job, which has no CPU flag and sizes its local Ray by the machine,
  gets `RAY_OVERRIDE_RESOURCES={"CPU": N}` (Ray's own override of what
  `ray.init()` detects). `RAY_USAGE_STATS_ENABLED=0` for every run: no run
  tries to report usage (there is no network to report to).
* Same work: the same manifest, frame indices, resize, crop and model; every
  run must write exactly one row per video (and for ours, every row `ok`),
  or the benchmark stops; and it reports how often each method's top-1 and
  top-5 classes equal ours (they should all but always).
* Order: the methods run in a rotating order over `--repeats` rounds (round
  1: plain, ray, ours; round 2: ray, ours, plain; ...), so slow drifts of the
  machine hit all of them alike; medians are reported.
* Warm caches: every video is read once before timing (the page cache holds
  the corpus for all runs alike), and each method first runs once, untimed,
  on two videos: Python's bytecode caches, the shared libraries and our
  job's MLflow database (created on first use, in the work folder) are then
  warm for every timed run.
* Nothing left behind: this process is made the "child subreaper" of its
  runs, so processes a run leaves behind (Ray's workers, GCS, raylet) come
  back to it; a run ends only once all of them have exited (those still
  alive after `--linger` seconds are killed and counted), so no run eats
  into the next one's CPUs. Their CPU time is counted too: `CPU s / video`
  is the user + system time of a run's whole process tree.

Why no steady-state window here (unlike bench_pipeline.py): the question is
what a whole job costs its user, start-up and tail included; the plain loop
and the Ray Data job also show no progress to time. bench_pipeline.py
measures the steady rate of our job's stages.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from upload_corpus import (  # noqa: E402  (bench/ is no package)
    DEFAULT_CACHE,
    DEFAULT_SIZES,
    make_corpus,
    read_manifest,
)

METHODS = ("plain", "ray", "ours")
DESCRIPTION = {
    "plain": "plain loop: 1 process, decord get_batch + torch, batch {batch}, {cpus} threads",
    "ray": "textbook Ray Data: map(decode) -> map_batches(2 actors x 1 thread, batch {batch}); "
           "Ray fuses the two into the actors",
    "ours": "`tsm label`, default flags{extra}",
}
# random-weight TSMs for timing: weights do not change the speed
MODELS = {
    "resnet18-224": dict(arch="resnet18", num_classes=400, num_segments=8,
                         input_size=224, resize_size=256),
    "mobilenetv2-224": dict(arch="mobilenetv2", num_classes=400, num_segments=8,
                            input_size=224, resize_size=256),
}
WARMUP_VIDEOS = 2
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


# ----------------------------------------------------------------- corpus and model
def resolve_model(name: str, cache: Path) -> Path:
    """A saved model folder for `name`: a built-in random TSM (made once), bundled, or a path."""
    if name == "bundled":
        return ROOT / "tsm_model" / "bundled"
    if name not in MODELS:
        path = Path(name).resolve()
        if not (path / "config.json").is_file():
            raise SystemExit(f"error: --model {name}: not {', '.join(MODELS)}, bundled or a "
                             "saved model folder (config.json + model.safetensors)")
        return path
    folder = cache / "models" / name
    if not (folder / "model.safetensors").is_file():
        import torch

        import tsm_model  # the project's packages: the repository root is on the path

        torch.manual_seed(0)
        tsm_model.save(tsm_model.build(tsm_model.TSMConfig(**MODELS[name])), folder)
    return folder


def warm_page_cache(uris: list[str]) -> int:
    """Read every video once, so the first timed run does not pay for the disk alone."""
    total = 0
    for uri in uris:
        with open(uri, "rb") as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
    return total


# ----------------------------------------------------------------- running one method
@dataclass
class Run:
    method: str
    round: int  # 0: the untimed warm-up
    position: int  # place in the round's order
    videos: int
    wall_s: float  # process start -> its exit: what the user waits for
    tree_s: float  # process start -> the last process it left behind has exited
    cpu_s: float  # user + system time of the whole process tree
    inner_s: float | None  # the time the method reports for itself (after its imports)
    leftovers_killed: int
    rows: int
    load_before: float  # 1-min load average when the run started
    log: str
    top5: dict[str, tuple]  # video -> top-5 class ids, to check the methods agree

    @property
    def videos_per_s(self) -> float:
        return self.videos / self.wall_s


def _descendants() -> list[int]:
    """Live processes below this one (from /proc: parent links)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [os.getpid()]
    while stack:
        for child in children.get(stack.pop(), ()):
            out.append(child)
            stack.append(child)
    return out


def _reap() -> None:
    """Collect every exited child (orphans of a run come to us as their subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill(pids: list[int]) -> int:
    """SIGKILL each of `pids` (only processes of our own runs); returns how many were alive."""
    killed = 0
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def _wait_for_tree(linger_s: float) -> int:
    """Wait until no process of the run is left; kill what remains after `linger_s`."""
    deadline = time.monotonic() + linger_s
    killed = 0
    while True:
        _reap()
        left = _descendants()
        if not left:
            return killed
        if time.monotonic() > deadline:
            killed += _kill(left)
            deadline = time.monotonic() + 10  # then just collect them
        time.sleep(0.05)


def _cpu_of_children() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pin(cpus: list[int]):
    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


# "Labelled 4 of 4 videos in 26.7s" or "... in 1m 05s" or "... in 1h 02m 03s"
_OURS_TIME = re.compile(r"Labelled [\d,]+ of [\d,]+ videos in (?:(\d+)h )?(?:(\d+)m )?([\d.]+)s")


def _inner_seconds(method: str, stdout: str) -> float | None:
    """What the method says it spent after its own start-up (None if it says nothing)."""
    if method == "ours":
        m = _OURS_TIME.search(stdout)
        if not m:
            return None
        h, mins, s = m.groups()
        return int(h or 0) * 3600 + int(mins or 0) * 60 + float(s)
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return float(json.loads(line)["seconds"])
    return None


def command(method: str, manifest: Path, model: Path, out: Path, args) -> list[str]:
    if method == "ours":
        return [str(args.tsm), "label", str(manifest), "--output", str(out),
                "--model", str(model), "--no-progress", *args.label_args]
    output = out / "labels.parquet" if method == "plain" else out
    return [sys.executable, str(ROOT / "bench" / "baselines.py"), method, str(manifest),
            "--model", str(model), "--output", str(output),
            "--batch-size", str(args.batch_size), "--cpus", str(args.cpus)]


def check_output(method: str, out: Path, uris: list[str]) -> tuple[int, dict[str, tuple]]:
    """Rows written and each video's top-5 class ids; raises unless there is exactly one
    (ok) row per video."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted(out.rglob("*.parquet"))
    column, ids = ("video_uri", "top_k_ids") if method == "ours" else ("uri", "top5_ids")
    extra = ["status"] if method == "ours" else []
    tables = [pq.read_table(f, columns=[column, ids, *extra]) for f in files]
    rows = sum(t.num_rows for t in tables)
    seen = {u for t in tables for u in t[column].to_pylist()}
    problems = []
    if rows != len(uris) or seen != set(uris):
        problems.append(f"{rows} rows for {len(seen)} distinct of {len(uris)} videos")
    if method == "ours":
        bad = sum(len(t) - (pc.sum(pc.equal(t["status"], "ok")).as_py() or 0) for t in tables)
        if bad:
            problems.append(f"{bad} error rows")
    if problems:
        raise RuntimeError(f"{method}: wrong output in {out}: {'; '.join(problems)}")
    top5 = {u: tuple(k) for t in tables
            for u, k in zip(t[column].to_pylist(), t[ids].to_pylist(), strict=True)}
    return rows, top5


def run_once(method: str, rnd: int, position: int, manifest: Path, uris: list[str],
             model: Path, work: Path, args, env: dict[str, str]) -> Run:
    tag = f"{method}-r{rnd}"
    out = work / "out" / tag
    log = work / "logs" / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = command(method, manifest, model, out, args)
    load = os.getloadavg()[0]
    _wait_for_tree(0)  # nothing of ours may be running
    cpu0 = _cpu_of_children()
    with open(log, "wb") as err:
        err.write((shlex.join(cmd) + "\n").encode())
        err.flush()
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=err,
                                preexec_fn=_pin(args.cpu_list))
        try:
            stdout, _ = proc.communicate(timeout=args.run_timeout)
        except BaseException:  # timeout or Ctrl-C: take the whole run down
            _kill([proc.pid, *_descendants()])
            proc.wait()
            _wait_for_tree(10)
            raise
        wall = time.monotonic() - start
        killed = _wait_for_tree(args.linger)
        tree = time.monotonic() - start
        text = stdout.decode(errors="replace")
        err.write(b"--- stdout ---\n" + stdout)
    cpu = _cpu_of_children() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed (exit code {proc.returncode}); see {log}")
    rows, top5 = check_output(method, out, uris)
    shutil.rmtree(out, ignore_errors=True)  # outputs can be large; the log stays
    return Run(method, rnd, position, len(uris), wall, tree, cpu, _inner_seconds(method, text),
               killed, rows, load, str(log), top5)


# ----------------------------------------------------------------- the report
def machine() -> dict:
    cpu_model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("tsm-labeller", "torch", "torchvision", "ray", "decord2", "pyarrow",
                    "mlflow", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True)
    out["ffmpeg"] = ffmpeg.stdout.splitlines()[0] if ffmpeg.returncode == 0 else None
    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    out["git"] = git.stdout.strip() or None
    return out


def summarise(runs: list[Run], methods: list[str]) -> dict:
    out = {}
    for m in methods:
        mine = [r for r in runs if r.method == m and r.round > 0]
        out[m] = {
            "videos_per_s": statistics.median(r.videos_per_s for r in mine),
            "per_round": [round(r.videos_per_s, 3) for r in mine],
            "wall_s": statistics.median(r.wall_s for r in mine),
            "startup_s": statistics.median(
                (r.wall_s - r.inner_s) for r in mine if r.inner_s is not None
            ) if any(r.inner_s is not None for r in mine) else None,
            "cpu_s_per_video": statistics.median(r.cpu_s / r.videos for r in mine),
        }
    if "ours" in out:
        for m in methods:
            out[m]["ours_over_this"] = out["ours"]["videos_per_s"] / out[m]["videos_per_s"]
    return out


def agreement(runs: list[Run], methods: list[str]) -> dict[str, dict[str, float]]:
    """Share of videos whose top-1 class and whole top-5 list match the reference method's
    (ours if run): evidence that the methods compute the same thing. Random-weight models
    give close scores, so a rare flip of near-equal classes is rounding, not a bug."""
    last = {r.method: r for r in runs}  # each method's last run
    ref = last["ours" if "ours" in last else methods[0]]
    out = {}
    for m, r in last.items():
        same1 = sum(r.top5[u][:1] == ref.top5[u][:1] for u in ref.top5)
        same5 = sum(r.top5[u] == ref.top5[u] for u in ref.top5)
        out[m] = {"reference": ref.method, "top1": same1 / len(ref.top5),
                  "top5": same5 / len(ref.top5)}
    return out


def table(summary: dict, args, n: int) -> str:
    extra = f" + `{shlex.join(args.label_args)}`" if args.label_args else ""
    lines = [
        "| method | videos/s (median) | per round | wall s (median) | start-up s | "
        "CPU s / video | ours / this |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for m, s in summary.items():
        what = DESCRIPTION[m].format(batch=args.batch_size, cpus=args.cpus, extra=extra)
        start = f"{s['startup_s']:.1f}" if s["startup_s"] is not None else ""
        ratio = f"{s['ours_over_this']:.2f}" if "ours_over_this" in s else ""
        lines.append(
            f"| {m}: {what} | **{s['videos_per_s']:.3f}** | "
            f"{', '.join(f'{v:.3f}' for v in s['per_round'])} | {s['wall_s']:.1f} | {start} | "
            f"{s['cpu_s_per_video']:.3f} | {ratio} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str]):
    # flags after "--" belong to `tsm label`, not to this script
    label_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Flags after `--` are passed to `tsm label` (our job) only.",
    )
    corpus = p.add_argument_group("corpus (bench/upload_corpus.py), unless --manifest is given")
    corpus.add_argument("--count", type=int, default=120, help="clips (default %(default)s)")
    corpus.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    corpus.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help="WxH list, in turn")
    corpus.add_argument("--gop", type=int, default=50, help="frames between keyframes")
    corpus.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="where clips are kept between runs (default %(default)s)")
    p.add_argument("--manifest", type=Path, help="label these videos instead (CSV, uri column)")
    p.add_argument("--model", default="resnet18-224",
                   help=f"{' | '.join(MODELS)} (random weights, made once) | bundled | PATH "
                        "(default %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds (default %(default)s)")
    p.add_argument("--cpus", type=int, default=2,
                   help="CPUs every method gets (pinned cores, threads, Ray CPUs)")
    p.add_argument("--batch-size", type=int, default=8, help="the baselines' batch size")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="which to run, comma-separated (default %(default)s)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the untimed warm-up run of each method")
    p.add_argument("--tsm", type=Path, default=Path(sys.executable).parent / "tsm",
                   help="the tsm command (default: the one next to this Python)")
    p.add_argument("--json", type=Path,
                   default=Path(f"bench-vs-baselines-{time.strftime('%Y%m%d-%H%M%S')}.json"),
                   help="where the results go as JSON")
    p.add_argument("--run-timeout", type=float, default=4 * 3600, help="seconds per run")
    p.add_argument("--linger", type=float, default=30.0,
                   help="seconds a run's leftover processes get to exit before being killed")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    args.label_args = label_args
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - set(METHODS)
    if unknown or not args.methods:
        p.error(f"--methods: choose from {', '.join(METHODS)}")
    mine = sorted(os.sched_getaffinity(0))
    if args.cpus > len(mine):
        p.error(f"--cpus {args.cpus}, but this process may use {len(mine)} CPUs")
    args.cpu_list = mine[: args.cpus]
    return args


def main() -> None:
    started = time.time()
    args = parse_args(sys.argv[1:])
    if "plain" in args.methods or "ray" in args.methods:
        import importlib.util

        if importlib.util.find_spec("decord") is None:  # the baselines decode with decord
            sys.exit("error: the baselines need decord: `make bench` installs it "
                     "(the `bench` extra)")
    the_command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    # orphans of our runs (Ray's processes) are re-parented here, so we can wait for them
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("warning: cannot become a child subreaper; leftover processes of a run "
              "are neither awaited nor counted", file=sys.stderr)

    cache = Path(args.cache)
    if args.manifest:
        manifest = args.manifest.resolve()
        corpus = {"manifest": str(manifest)}
    else:
        t0 = time.monotonic()
        manifest = make_corpus(args.count, args.duration, sizes=args.sizes.split(","),
                               gop=args.gop, cache=cache)
        corpus = {"manifest": str(manifest), "count": args.count, "duration_s": args.duration,
                  "sizes": args.sizes, "gop": args.gop, "fps": 25, "bframes": 2,
                  "made_in_s": round(time.monotonic() - t0, 1)}
    uris = read_manifest(manifest)
    n = len(uris)
    corpus["videos"] = n
    corpus["bytes"] = warm_page_cache(uris)
    model = resolve_model(args.model, cache)
    model_config = json.loads((model / "config.json").read_text())
    model_config.pop("class_names", None)
    print(f"corpus: {n} videos, {corpus['bytes'] / 1e6:.1f} MB ({manifest})\n"
          f"model: {args.model} ({model})", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-vs-baselines-"))
    env = dict(os.environ)
    env["RAY_OVERRIDE_RESOURCES"] = json.dumps({"CPU": args.cpus})
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"  # not the repository's
    load_before = os.getloadavg()
    if load_before[0] > 0.5 * args.cpus:
        print(f"warning: 1-min load average {load_before[0]:.1f} on {args.cpus} CPUs: the "
              "machine is not quiet, wall-clock figures will be slower and noisier",
              file=sys.stderr)

    runs: list[Run] = []
    try:
        if args.warmup:
            small = work / "warmup.csv"
            small.write_text("uri\n" + "".join(f"{u}\n" for u in uris[:WARMUP_VIDEOS]))
            for i, m in enumerate(args.methods):
                run = run_once(m, 0, i, small, uris[:WARMUP_VIDEOS], model, work, args, env)
                runs.append(run)
                print(f"warm-up  {m:<5} {run.wall_s:6.1f} s", flush=True)
        for r in range(1, args.repeats + 1):
            k = (r - 1) % len(args.methods)
            order = args.methods[k:] + args.methods[:k]
            for i, m in enumerate(order):
                run = run_once(m, r, i, manifest, uris, model, work, args, env)
                runs.append(run)
                print(f"round {r}  {m:<5} {run.wall_s:6.1f} s  {run.videos_per_s:7.3f} "
                      f"videos/s  {run.cpu_s / n:6.3f} CPU s/video"
                      + (f"  ({run.leftovers_killed} leftover processes killed)"
                         if run.leftovers_killed else ""), flush=True)
    except RuntimeError as e:  # a run failed or wrote wrong output: its log says why
        raise SystemExit(f"error: {e}\nlogs kept in {work / 'logs'}") from None
    except BaseException:
        print(f"logs kept in {work / 'logs'}", file=sys.stderr)
        raise

    summary = summarise(runs, args.methods)
    agree = agreement(runs, args.methods)
    info = machine()
    vers = versions()
    md = table(summary, args, n)
    load_after = os.getloadavg()
    clip = (f"{args.duration:g} s clips, {args.sizes}, GOP {args.gop}" if not args.manifest
            else str(manifest))
    lines = [
        f"{n} videos ({clip}); model {args.model} ({model_config['arch']}, "
        f"{model_config['num_segments']} segments, {model_config['input_size']} px crops); "
        f"{args.cpus} CPUs for every method; median of {args.repeats} rounds",
        "",
        md,
        "",
        "videos/s: videos / wall-clock seconds from process start to exit. start-up s: wall "
        "clock before the method's own clock starts (interpreter, imports; ours: the CLI's "
        "imports, before listing, MLflow and Ray). CPU s / video: user + system time of the "
        "run's whole process tree.",
        "",
    ]
    if "ours" in summary:
        lines += [f"- ours / {m}: **{summary[m]['ours_over_this']:.2f}x** "
                  f"({'faster' if summary[m]['ours_over_this'] > 1 else 'slower'})"
                  for m in args.methods if m != "ours"]
    lines += [
        "- same labels as " + agree[args.methods[0]]["reference"] + ": " + ", ".join(
            f"{m} top-1 {a['top1']:.0%}, top-5 {a['top5']:.0%}" for m, a in agree.items()),
        f"- machine: {info['cpu_model']}, nproc {info['nproc']} (of {info['cpu_count']}), "
        f"{info['memory_gib']} GiB, Linux {info['kernel']}; 1-min load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if k != "ffmpeg")
        + f", Python {info['python']}; {vers['ffmpeg']}",
        f"- command: `{the_command}`",
    ]
    report = "\n".join(lines)
    print()
    print(report)
    results = {
        "command": the_command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                                         time.localtime(started)),
        "machine": info, "versions": vers, "corpus": corpus,
        "model": {"name": args.model, "path": str(model), "config": model_config},
        "cpus": args.cpus, "pinned_cpus": args.cpu_list, "repeats": args.repeats,
        "baseline_batch_size": args.batch_size, "label_args": args.label_args,
        "commands": {m: shlex.join(command(m, manifest, model, Path("OUT"), args))
                     for m in args.methods},
        "load_average_before": load_before, "load_average_after": load_after,
        "summary": summary, "agreement": agree, "table_markdown": md,
        "report_markdown": report,
        "runs": [{k: v for k, v in asdict(r).items() if k != "top5"}
                 | {"videos_per_s": r.videos_per_s} for r in runs],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.json}")
    if args.keep:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
