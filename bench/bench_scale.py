"""`tsm label` at nightly scale: a 1,000,000-row manifest, 1,000,000 done keys, a long run.

    .venv/bin/python bench/bench_scale.py all                 # everything below, in order
    .venv/bin/python bench/bench_scale.py prepare             # inputs and outputs (cached)
    .venv/bin/python bench/bench_scale.py listing             # the driver's listing + filter rate
    .venv/bin/python bench/bench_scale.py resume-check        # OutputTable.done over 1M rows
    .venv/bin/python bench/bench_scale.py rerun               # tsm label over 1M inputs, 1M done
    .venv/bin/python bench/bench_scale.py first               # 1M inputs, none done: first video
    .venv/bin/python bench/bench_scale.py long --videos 10000 # driver CPU against the job's
    .venv/bin/python bench/bench_scale.py costs               # per-video costs for docs/scale.md

Each step prints its numbers and adds them to a JSON file (`--json`, default
`bench-scale.json` in the current folder); docs/scale.md reports them.

The inputs (made once by `prepare`, under `--work`, default
`~/.cache/tsm-labeller/bench-scale`):

* 4 real small videos (`bench/upload_corpus.py`: 2 s, 320x180, H.264 with
  B-frames), and `--real` (default 10,000) hard links to them under distinct
  names in `videos/` (10 folders of 1,000);
* `manifest-1m.parquet`: 1,000,000 rows (`uri`, `version`, `size`): every
  100th row is one of the hard links, the 990,000 others name files under
  `missing/`, which does not exist (the manifest's `version` and `size`
  columns mean no row is stat-ed while listing: a nightly S3 Inventory looks
  the same; such a row becomes a `missing` error row if it is ever decoded).
  Not a million real files: 1M directory entries on a disk shared with other
  work buy nothing the listing or the resume check would see;
* `manifest-10k.parquet`: the 10,000 hard links alone, for the long run;
* `done-1m/`: an output holding 1,000,000 committed rows, one per input of
  the 1M manifest (status ok, zero embeddings), in the job's schema and
  partition for the bench model, written by `pipeline.sink.write_part` (the
  job's own part writer) under the output's lease: 100 parts of 10,000 rows.

The model is a random MobileNetV2 TSM with 4 segments at 32 px (the test
suite's size): the runs measure the driver, not the model.

How the runs are measured: the job runs as its own process (`run_label`
behind `python -c`, the same call as `tsm label`; it prints its progress and,
at the end, its own CPU time and peak RSS), started by this process, which is
made the "child subreaper" of everything below it, so every process the job
starts (its local Ray: GCS, raylet, workers and their decoding processes)
stays in the tree and its CPU time is counted once it exits. `RAY_ADDRESS` is
set to `local`: the job starts its own Ray and joins no other on the machine.

* time to the first decoded video: from the job's process start to (a) the
  first decoding process (`pipeline.isolation`) appearing under a Ray worker,
  i.e. a video being fetched and decoded, and (b) the first video counted
  done by the model actors (decoded and labelled); the first committed part
  too;
* driver peak RSS: `VmHWM` of the job's process (`/proc/<pid>/status`), polled
  and, for runs that end, read by the job itself at exit;
* resume check: `OutputTable.done` over the 1M-row output, in a fresh process;
* driver CPU per 1,000 videos: the job process's user + system time (all its
  threads) over the videos it labelled, against the CPU time of the whole
  process tree.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vs_baselines import (  # noqa: E402  (bench/ is no package)
    PR_SET_CHILD_SUBREAPER,
    _cpu_of_children,
    _descendants,
    _wait_for_tree,
    machine,
    versions,
)
from bench_vs_baselines import resolve_model as resolve_bench_model  # noqa: E402
from proctree import cmdline, tree_cpu_seconds  # noqa: E402
from upload_corpus import DEFAULT_CACHE, DEFAULT_SIZES, make_corpus, read_manifest  # noqa: E402

DEFAULT_WORK = Path.home() / ".cache" / "tsm-labeller" / "bench-scale"
ROWS = 1_000_000
EVERY = 100  # every 100th manifest row is a real video
PART_ROWS = 10_000
MODEL = dict(arch="mobilenetv2", num_classes=4, num_segments=4, input_size=32, resize_size=40,
             class_names=["archery", "bowling", "cycling", "diving"])
HZ = os.sysconf("SC_CLK_TCK")
MEM_FLOOR_GIB = 3.0  # a shared machine: stop a run before others run out of memory

# the job: run_label with a progress line per change, and its own CPU and peak RSS at exit
DRIVER = textwrap.dedent("""
    import json, resource, sys, time
    from pipeline.job import run_label
    from pipeline.settings import LabelConfig

    def hwm_kib():
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith("VmHWM")).split()[1])

    settings = json.loads(sys.argv[3])
    last = [None]

    def on_progress(p):
        now = (p.phase, p.listed, p.skipped, p.done, p.written)
        if now != last[0]:
            last[0] = now
            print("progress " + json.dumps({"t": time.time(), "phase": p.phase,
                  "listed": p.listed, "skipped": p.skipped, "done": p.done,
                  "written": p.written}), flush=True)

    s = run_label(LabelConfig(input=sys.argv[1], output=sys.argv[2], **settings),
                  on_progress=on_progress)
    u = resource.getrusage(resource.RUSAGE_SELF)
    print("summary " + json.dumps({"t": time.time(), "listed": s.listed, "skipped": s.skipped,
          "ok": s.ok, "errors": s.errors, "parts": len(s.parts), "wall_s": s.wall_time_s,
          "cpu_s": u.ru_utime + u.ru_stime, "vm_hwm_kib": hwm_kib()}), flush=True)
""")


# ---------------------------------------------------------------------- inputs
def bench_model(work: Path) -> Path:
    folder = work / "model" / "tiny-tsm"
    if not (folder / "model.safetensors").is_file():
        import torch

        import tsm_model

        torch.manual_seed(0)
        tsm_model.save(tsm_model.build(tsm_model.TSMConfig(**MODEL)), folder)
    return folder


def _version(path: Path) -> tuple[str, int]:
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}", st.st_size


def prepare(work: Path, real: int) -> dict:
    """The clips, the hard links, both manifests and the 1M-row output (each made once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    clips = [Path(u) for u in read_manifest(make_corpus(
        4, 2.0, sizes=("320x180",), cache=work / "clips", manifest=work / "clips.csv"))]
    videos = work / "videos"
    links = []
    for i in range(real):
        path = videos / f"d{i // 1000:03d}" / f"v{i:07d}.mp4"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(clips[i % len(clips)], path)
        links.append(path)
    versions_ = [_version(c) for c in clips]  # hard links share the clip's size and mtime

    m1 = work / "manifest-1m.parquet"
    if not m1.exists():
        uris, vers, sizes = [], [], []
        for i in range(ROWS):
            if i % EVERY == 0 and i // EVERY < real:
                uris.append(str(links[i // EVERY]))
                v, s = versions_[(i // EVERY) % len(clips)]
            else:
                uris.append(str(work / "missing" / f"d{i // 10_000:03d}" / f"m{i:07d}.mp4"))
                v, s = versions_[i % len(clips)]
            vers.append(v)
            sizes.append(s)
        pq.write_table(pa.table({"uri": uris, "version": vers, "size": sizes}), m1)
    m10k = work / "manifest-10k.parquet"
    if not m10k.exists():
        pq.write_table(pa.table({
            "uri": [str(p) for p in links],
            "version": [versions_[i % len(clips)][0] for i in range(real)],
            "size": [versions_[i % len(clips)][1] for i in range(real)],
        }), m10k)
    done = work / "done-1m"
    if not (done / "COMPLETE").exists():
        write_done_output(m1, done, bench_model(work))
        (done / "COMPLETE").write_text("1M rows\n")
    return {"work": str(work), "clips": [str(c) for c in clips], "real_videos": real,
            "manifest_1m": str(m1), "manifest_10k": str(m10k), "done_output": str(done),
            "model": str(bench_model(work)), "prepare_s": round(time.monotonic() - t0, 1)}


def write_done_output(manifest: Path, out: Path, model: Path) -> None:
    """One committed row per manifest row, in the job's partition and schema for `model`,
    written by the job's part writer under the output's lease."""
    import shutil

    import numpy as np
    import pyarrow.parquet as pq

    import tsm_model
    from pipeline.contract import Predictions, RunStamp, build_rows, output_schema
    from pipeline.sink import PartSpec, write_part
    from pipeline.store import store_for
    from pipeline.table import OutputTable
    from registry.versions import resolve_model

    shutil.rmtree(out, ignore_errors=True)
    ref = resolve_model(str(model))
    config = tsm_model.load(ref.path).config
    table = OutputTable(str(out), ref.name, ref.version)
    schema = output_schema(tsm_model.FEATURE_DIMS[config.arch])
    stamp = RunStamp(ref.name, ref.version, "bench-synthetic", "uniform", config.num_segments)
    dim = schema.field("embedding").type.list_size
    with store_for(str(out)).lease(str(out), "bench-synthetic-lease") as lease:
        spec = PartSpec(str(out), table.partition, stamp.run_id, lease.run_id, schema,
                        row_group_rows=PART_ROWS, compression="zstd")
        for batch in pq.ParquetFile(manifest).iter_batches(batch_size=PART_ROWS):
            n = batch.num_rows
            rows = build_rows(
                schema, stamp, video_uri=batch["uri"].to_pylist(),
                source_version=batch["version"].to_pylist(), error_kind=[None] * n,
                error_message=[None] * n,
                predictions=Predictions(np.tile(np.arange(2, dtype=np.int32), (n, 1)),
                                        np.full((n, 2), 0.5, np.float32), config.class_names,
                                        np.zeros((n, dim), np.float32)))
            write_part(rows, spec)


# ---------------------------------------------------------------------- the job, watched
def _status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(ln for ln in f if ln.startswith(field)).split()[1])
    except (OSError, StopIteration):
        return None


def _cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except (OSError, IndexError):
        return None


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (Ray's object store) split among their users."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return int(next(ln for ln in f if ln.startswith("Pss:")).split()[1])
    except (OSError, StopIteration):
        return 0


def _tree_pss() -> tuple[int, list[tuple[int, str]]]:
    """The tree's PSS (KiB) and its three largest processes (PSS in MiB, the command)."""
    each = [(_pss_kib(p), p) for p in _descendants()]
    top = sorted(each, reverse=True)[:3]
    return sum(k for k, _ in each), [(k // 1024, cmdline(p)[:60]) for k, p in top]


def _mem_available_gib() -> float:
    with open("/proc/meminfo") as f:
        return int(next(ln for ln in f if ln.startswith("MemAvailable")).split()[1]) / 2**20


def run_job(inp: str, out: Path, model: Path, env: dict, *, stop_after_first_s: float | None,
            timeout_s: float, tree_pss_limit_gib: float, settings: dict | None = None,
            stop_after_decoding_s: float | None = None) -> dict:
    """Run the job, watch it, and (optionally) stop it `stop_after_first_s` after the first
    video is labelled, or `stop_after_decoding_s` after the first decoding process started.
    Returns what was measured; the process tree is gone when it returns."""
    settings = {"model": str(model), **(settings or {})}
    cpu0 = _cpu_of_children()
    started_wall = time.time()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, inp, str(out), json.dumps(settings)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    m: dict = {"first_decode_process_s": None, "first_done_s": None, "first_part_s": None,
               "driver_vm_hwm_kib": 0, "driver_cpu_s": 0.0, "tree_pss_peak_kib": 0,
               "stopped": None}
    progress: dict = {}
    seen = 0
    timeline: list[tuple] = []
    next_mark = 0.0

    def take_lines() -> None:
        nonlocal progress, seen
        for line in lines[seen:]:
            kind, _, body = line.partition(" ")
            if kind == "progress":
                progress = json.loads(body)
                if m["first_done_s"] is None and progress["done"] > 0:
                    m["first_done_s"] = progress["t"] - started_wall
            elif kind == "summary":
                summary = json.loads(body)
                m["summary"] = summary
                m["driver_vm_hwm_kib"] = max(m["driver_vm_hwm_kib"], summary["vm_hwm_kib"])
        seen = len(lines)

    while proc.poll() is None:
        now = time.monotonic() - t0
        take_lines()
        m["driver_vm_hwm_kib"] = max(m["driver_vm_hwm_kib"],
                                     _status_kib(proc.pid, "VmHWM") or 0)
        # the driver's CPU (all its threads) as long as it lives, its Ray shutdown included
        m["driver_cpu_s"] = _cpu_s(proc.pid) or m["driver_cpu_s"]
        if now >= next_mark:  # (s, videos done, driver CPU s, CPU s of the live tree)
            timeline.append((round(now, 2), progress.get("done", 0), m["driver_cpu_s"],
                             round(tree_cpu_seconds(proc.pid), 2)))
            next_mark = now + 1.0
        if m["first_decode_process_s"] is None and any(
                "pipeline.isolation" in cmdline(p) for p in _descendants()):
            m["first_decode_process_s"] = now
        if m["first_part_s"] is None and any(out.rglob("part-*.parquet")):
            m["first_part_s"] = now
        pss, top = _tree_pss()
        if pss > m["tree_pss_peak_kib"]:
            m["tree_pss_peak_kib"], m["largest_processes_at_peak"] = pss, top
        stop = None
        if (stop_after_first_s is not None and m["first_done_s"] is not None
                and now > m["first_done_s"] + stop_after_first_s):
            stop = f"{stop_after_first_s:g} s after the first labelled video"
        elif (stop_after_decoding_s is not None and m["first_decode_process_s"] is not None
              and now > m["first_decode_process_s"] + stop_after_decoding_s):
            stop = f"{stop_after_decoding_s:g} s after the first decoding process started"
        elif now > timeout_s:
            stop = f"time limit ({timeout_s:g} s)"
        elif pss > tree_pss_limit_gib * 2**20:
            stop = f"the process tree's PSS passed {tree_pss_limit_gib:g} GiB"
        elif _mem_available_gib() < MEM_FLOOR_GIB:
            stop = f"the machine has less than {MEM_FLOOR_GIB:g} GiB available"
        if stop:
            m["stopped"] = stop
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.25)
    proc.wait()
    m["wall_s"] = time.monotonic() - t0
    m["exit"] = proc.returncode
    m["leftovers_killed"] = _wait_for_tree(linger_s=20)
    m["tree_cpu_s"] = _cpu_of_children() - cpu0
    time.sleep(0.3)
    take_lines()
    if "summary" in m:  # what the job itself measured just before it printed its summary
        m["driver_cpu_s"] = max(m["driver_cpu_s"], m["summary"]["cpu_s"])
    if timeline:
        # the job's CPU, all processes: what the reaped tree used (rusage), or, when Ray's
        # shutdown left workers that nobody reaped (their time then counts nowhere), the
        # live tree at its peak plus what the driver used after that mark
        _, _, driver_at, peak = max(timeline, key=lambda x: x[3])
        m["tree_cpu_s"] = max(m["tree_cpu_s"], peak + m["driver_cpu_s"] - driver_at)
    m["progress"] = progress
    m["timeline"] = timeline
    return m


# ---------------------------------------------------------------------- the steps
def step_listing(p: dict) -> dict:
    """The driver's own work per input: read the manifest, dedupe, and filter (no Ray)."""
    from pipeline.listing import ListingStats, iter_inputs
    from pipeline.source import FeedStats, todo
    from pipeline.table import OutputTable
    from registry.versions import resolve_model

    def hwm() -> int:
        return _status_kib(os.getpid(), "VmHWM") or 0

    out = {}
    rss0 = _status_kib(os.getpid(), "VmRSS") or 0
    c0, t0 = time.process_time(), time.monotonic()
    stats = ListingStats()
    n = sum(c.num_rows for c in iter_inputs(p["manifest_1m"], stats))
    out["list_1m"] = {"rows": n, "wall_s": time.monotonic() - t0,
                      "cpu_s": time.process_time() - c0,
                      "rows_per_s": n / (time.monotonic() - t0),
                      "rss_growth_mib": ((_status_kib(os.getpid(), "VmRSS") or 0) - rss0) / 1024}
    ref = resolve_model(p["model"])
    done = OutputTable(p["done_output"], ref.name, ref.version).done("uniform",
                                                                     MODEL["num_segments"])
    c0, t0 = time.process_time(), time.monotonic()
    feed = FeedStats()
    left = sum(c.num_rows for c in todo(iter_inputs(p["manifest_1m"], ListingStats()), done,
                                        feed))
    out["list_and_filter_1m_against_1m_done"] = {
        "rows": ROWS, "left": left, "skipped": feed.skipped, "wall_s": time.monotonic() - t0,
        "cpu_s": time.process_time() - c0, "rows_per_s": ROWS / (time.monotonic() - t0)}
    out["peak_rss_mib"] = hwm() / 1024
    return out


RESUME_CHECK = textwrap.dedent("""
    import json, resource, sys, time
    t0, c0 = time.monotonic(), time.process_time()
    from pipeline.table import OutputTable
    from registry.versions import resolve_model
    ref = resolve_model(sys.argv[2])
    t1, c1 = time.monotonic(), time.process_time()
    keys = OutputTable(sys.argv[1], ref.name, ref.version).done("uniform", int(sys.argv[3]))
    t2, c2 = time.monotonic(), time.process_time()
    with open("/proc/self/status") as f:
        hwm = int(next(l for l in f if l.startswith("VmHWM")).split()[1])
    print(json.dumps({"keys": len(keys), "done_wall_s": t2 - t1, "done_cpu_s": c2 - c1,
                      "imports_s": t1 - t0, "process_vm_hwm_kib": hwm}))
""")


def step_resume_check(p: dict, env: dict) -> dict:
    """OutputTable.done over the 1M-row output in a fresh process (cold imports, warm disk)."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", RESUME_CHECK, p["done_output"], p["model"],
                           str(MODEL["num_segments"])], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = time.monotonic() - t0
    parts = list(Path(p["done_output"]).rglob("part-*.parquet"))
    out["parts"] = len(parts)
    out["bytes"] = sum(f.stat().st_size for f in parts)
    return out


def step_rerun(p: dict, env: dict, args) -> dict:
    """The job over 1M inputs that the output already holds: list, filter, nothing to label."""
    return run_job(p["manifest_1m"], Path(p["done_output"]), Path(p["model"]), env,
                   stop_after_first_s=None, timeout_s=args.timeout,
                   tree_pss_limit_gib=args.pss_limit_gib)


def step_first(p: dict, env: dict, args) -> dict:
    """The job over 1M inputs, none done: how long until the first video is decoded."""
    out = Path(tempfile.mkdtemp(prefix="bench-scale-first-"))
    try:
        return run_job(p["manifest_1m"], out / "labels", Path(p["model"]), env,
                       stop_after_first_s=args.after_first, timeout_s=args.timeout,
                       tree_pss_limit_gib=args.pss_limit_gib,
                       stop_after_decoding_s=args.after_decoding)
    finally:
        import shutil

        shutil.rmtree(out, ignore_errors=True)


def upload_links(work: Path, videos: int) -> Path:
    """A manifest of `videos` hard links, under distinct names, to the 120 upload-like clips of
    bench_vs_baselines (10 s, 25 fps, 2-s GOP, half 1280x720, half 640x272; made once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    clips = [Path(u) for u in read_manifest(make_corpus(
        120, 10.0, sizes=DEFAULT_SIZES, cache=DEFAULT_CACHE,
        manifest=work / "upload-clips.csv"))]
    rows = {"uri": [], "version": [], "size": []}
    for i in range(videos):
        clip = clips[i % len(clips)]
        path = work / "upload-videos" / f"d{i // 1000:03d}" / f"u{i:07d}{clip.suffix}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(clip, path)
        version, size = _version(clip)
        rows["uri"].append(str(path))
        rows["version"].append(version)
        rows["size"].append(size)
    manifest = work / f"manifest-upload-{videos}.parquet"
    pq.write_table(pa.table(rows), manifest)
    return manifest


def step_long(p: dict, env: dict, args) -> dict:
    """The job over `--videos` real videos to the end: the driver's CPU against the job's.
    `--corpus tiny`: the 2-s 320x180 clips and the 32-px model (the driver's worst case: the
    job does least per video); `upload`: upload-like 10-s clips with `--model`."""
    import pyarrow.parquet as pq

    manifest = Path(p["manifest_10k"])
    model = Path(p["model"])
    if args.corpus == "upload":
        manifest = upload_links(Path(p["work"]), args.videos)
        model = resolve_bench_model(args.model, DEFAULT_CACHE) if args.model else model
    elif args.videos != p["real_videos"]:
        manifest = Path(p["work"]) / f"manifest-{args.videos}.parquet"
        pq.write_table(pq.read_table(p["manifest_10k"]).slice(0, args.videos), manifest)
    out = Path(tempfile.mkdtemp(prefix="bench-scale-long-"))
    try:
        m = run_job(str(manifest), out / "labels", model, env,
                    stop_after_first_s=None, timeout_s=args.timeout,
                    tree_pss_limit_gib=args.pss_limit_gib,
                    settings={"sampling": args.sampling})
        m.update(corpus=args.corpus, model=str(model), sampling=args.sampling)
    finally:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    s = m.get("summary") or {}
    n = s.get("ok", 0) + sum(s.get("errors", {}).values())
    if n:
        m["videos"] = n
        m["driver_cpu_s_per_1000"] = 1000 * m["driver_cpu_s"] / n
        m["tree_cpu_s_per_1000"] = 1000 * m["tree_cpu_s"] / n
        m["driver_share_of_job_cpu"] = m["driver_cpu_s"] / m["tree_cpu_s"]
        # after start-up: from the first decoding process to the mark where the live tree
        # had used the most CPU, i.e. just before Ray's processes began to exit (the
        # driver's imports, MLflow and Ray's start are before it; once processes exit, the
        # live tree no longer counts their time). The videos are all of them: the ones
        # labelled after that mark are only waiting for their part to be written.
        t_dec = m["first_decode_process_s"]
        marks = [x for x in m["timeline"] if t_dec is not None and x[0] >= t_dec]
        if len(marks) >= 2:
            (t0_, d0, c0, tc0), (t1_, d1, c1, tc1) = marks[0], max(marks, key=lambda x: x[3])
            d1 = n
            m["after_startup"] = {"from_s": t0_, "to_s": t1_,
                                  "videos": d1 - d0, "driver_cpu_s": c1 - c0,
                                  "tree_cpu_s": tc1 - tc0,
                                  "driver_share": (c1 - c0) / max(tc1 - tc0, 1e-9)}
    return m


def step_costs(p: dict, args) -> dict:
    """CPU cost per video of the job's decoder (10 s and 5-minute 720p uploads, `--sampling`)
    and per clip of TSM on CPU (ResNet-50, ResNet-18, MobileNetV2; 8 segments at 224 px, in
    the actors' passes and memory layout), in this process: what a decode task's child and
    a model actor's thread spend."""
    import numpy as np
    import torch

    import tsm_model
    from pipeline.decode_stage import DecodeSpec
    from pipeline.fetch_decode import fetch_decode
    from pipeline.model_stage import clips_per_pass, for_inference
    from pipeline.settings import LabelConfig
    from pipeline.store import ObjectInfo
    from pipeline.transforms import resize_crop

    out: dict = {"decode": {}, "model": {}, "sampling": args.sampling}
    # what the job's decode tasks do with its default settings, for an 8-segment 224-px model
    spec = DecodeSpec.from_settings(
        tsm_model.TSMConfig(arch="resnet18", num_classes=400, num_segments=8, input_size=224,
                            resize_size=256),
        LabelConfig(input="-", output="-", model="-", sampling=args.sampling))
    torch.set_num_threads(1)  # as in a 1-CPU Ray task
    for label, count, duration in (("10s-720p", args.short_clips, 10.0),
                                   ("300s-720p", args.long_clips, 300.0)):
        uris = read_manifest(make_corpus(count, duration, sizes=("1280x720",),
                                         cache=Path(p["work"]) / "clips-720p",
                                         manifest=Path(p["work"]) / f"clips-{label}.csv"))
        per = []
        for u in uris:
            obj = ObjectInfo(u, os.path.getsize(u), None)
            fetch_decode(obj, spec.job)  # page cache and libraries warm
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            result = fetch_decode(obj, spec.job)
            assert result.frames is not None, result.error_message
            resize_crop(result.frames, spec.resize_size, spec.input_size)
            r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            per.append(((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime), t1 - t0,
                        os.path.getsize(u)))
        cpu = [c for c, _, _ in per]
        out["decode"][label] = {"clips": len(per), "cpu_s_per_video": float(np.median(cpu)),
                                "cpu_s_min": min(cpu), "cpu_s_max": max(cpu),
                                "wall_s_per_video": float(np.median([w for _, w, _ in per])),
                                "mean_bytes": float(np.mean([b for _, _, b in per]))}
    for arch in ("resnet50", "resnet18", "mobilenetv2"):
        model = for_inference(tsm_model.build(tsm_model.TSMConfig(
            arch=arch, num_classes=400, num_segments=8, input_size=224, resize_size=256)).eval(),
            use_gpu=False)  # the layout the model actors use
        # the clips the model actors put through the model in one pass on CPU
        batch = clips_per_pass(model.config, use_gpu=False, batch=args.model_batch)
        x = torch.randn(batch, 8, 3, 224, 224)
        row = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                model.logits_and_features(x)  # warm-up
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
                for _ in range(args.model_repeats):
                    model.logits_and_features(x)
                r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            clips = batch * args.model_repeats
            row[f"{threads}_threads"] = {
                "wall_s_per_clip": (t1 - t0) / clips,
                "cpu_s_per_clip": ((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime))
                / clips}
        out["model"][arch] = row
        torch.set_num_threads(1)
    out["clip_bytes_uint8_8x3x224x224"] = 8 * 3 * 224 * 224
    return out


# ---------------------------------------------------------------------- main
def _report(name: str, value: dict) -> None:
    print(f"\n== {name}")
    print(json.dumps(value, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("steps", nargs="+", choices=["all", "prepare", "listing",
                        "resume-check", "rerun", "first", "long", "costs"])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--real", type=int, default=10_000, help="hard links to real videos")
    parser.add_argument("--videos", type=int, default=10_000, help="videos in the long run")
    parser.add_argument("--after-first", type=float, default=20.0,
                        help="`first`: stop the job this many seconds after its first video")
    parser.add_argument("--after-decoding", type=float, default=120.0,
                        help="`first`: stop the job this many seconds after its first decoding "
                        "process started, labelled or not")
    parser.add_argument("--timeout", type=float, default=900.0, help="per job run, seconds")
    parser.add_argument("--pss-limit-gib", type=float, default=6.0,
                        help="stop a run whose process tree passes this PSS (a shared box)")
    parser.add_argument("--short-clips", type=int, default=6)
    parser.add_argument("--long-clips", type=int, default=2)
    parser.add_argument("--corpus", choices=["tiny", "upload"], default="tiny",
                        help="`long`: the 2-s 320x180 clips (default) or upload-like 10-s clips")
    parser.add_argument("--model", help="`long --corpus upload`: resnet18-224 | "
                        "mobilenetv2-224 | bundled | PATH (default: the 32-px bench model)")
    parser.add_argument("--sampling", choices=["uniform", "keyframe"], default="uniform",
                        help="`long` and `costs`: the job's sampling")
    parser.add_argument("--model-batch", type=int, default=8,
                        help="`costs`: the actors' batch (passed through the model as they do)")
    parser.add_argument("--model-repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("bench-scale.json"))
    args = parser.parse_args()
    steps = (["prepare", "listing", "resume-check", "rerun", "first", "long", "costs"]
             if "all" in args.steps else args.steps)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("warning: not a child subreaper: the job's CPU time is undercounted",
              file=sys.stderr)
    work = args.work.resolve()
    ray_tmp = Path(tempfile.mkdtemp(prefix="bsr-", dir="/tmp"))  # short: socket paths
    print(f"Ray's folders (logs) for the job runs: {ray_tmp}/ray")
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_TMPDIR": str(ray_tmp),
           "RAY_USAGE_STATS_ENABLED": "0",
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    results.setdefault("runs", [])
    record = {"command": shlex.join([os.path.relpath(sys.executable), *sys.argv]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
              "versions": versions(), "load_average_before": os.getloadavg(), "steps": {}}
    p = prepare(work, args.real)
    for step in steps:
        if step == "prepare":
            value = p
        elif step == "listing":
            value = step_listing(p)
        elif step == "resume-check":
            value = step_resume_check(p, env)
        elif step == "rerun":
            value = step_rerun(p, env, args)
        elif step == "first":
            value = step_first(p, env, args)
        elif step == "long":
            value = step_long(p, env, args)
        else:
            value = step_costs(p, args)
        value["load_average_after"] = os.getloadavg()
        record["steps"][step] = value
        _report(step, value)
        results["runs"].append(record)
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
        results["runs"].pop()
    results["runs"].append(record)
    args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nresults: {args.json}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
