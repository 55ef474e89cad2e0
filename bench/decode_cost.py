"""Decode CPU per video: keyframe vs uniform sampling, PyAV vs decord, on upload-like clips.

    # 10 s clips, 2-s GOP, 20 at 1280x720 and 20 at 640x360: the decoders, then the job
    .venv/bin/python bench/decode_cost.py

    # the clips of the issue's first measurements (720p and 640x272), more rounds
    .venv/bin/python bench/decode_cost.py --sizes 1280x720,640x272 --repeats 5

    # only some parts (decoders, job, profile)
    .venv/bin/python bench/decode_cost.py --parts decoders
    .venv/bin/python bench/decode_cost.py --parts job --job-repeats 3
    .venv/bin/python bench/decode_cost.py --parts profile
    .venv/bin/python bench/decode_cost.py --parts reads

Needs the `bench` extra for decord (`pip install -e ".[bench]"`); without it
the decord rows are left out. The issue's target (issue 10): decode CPU per
video at least 4x lower with keyframe sampling than before the change, on
these clips.

Part 1, `decoders`: the decoders alone, in this one process, side by side.
Each clip is decoded by every method in turn (the order rotates from clip to
clip and round to round, so a busy spell of the machine hits all alike), and
each decode is timed in CPU seconds of this process (`time.process_time`:
open, index, decode, frames to RGB numpy; one decoding thread everywhere).
Per clip the median over `--repeats` rounds is kept; the table gives the mean
over the clips of each size. The methods, all taking 8 segments:

* `decord old path`: the CPU decoder this project had before PyAV (commit
  a902a57^, pipeline/decoders/decord_cpu.py `_read_frames`): decode every
  frame from the start (`next()`) when that costs at most twice what seeking
  would, else `get_batch`; segment centres;
* `decord get_batch`: decord's own seeking at the segment centres (what the
  plain-loop baseline in bench/baselines.py does);
* `PyAV uniform`: `PyAVDecoder` (pipeline/decoders/pyav.py) at the segment
  centres, `tsm label --sampling uniform`;
* `PyAV keyframe`: the same with `--sampling keyframe`.

It also checks that PyAV uniform and decord get_batch return the same pixels.

Part 2, `job`: the real label job (`pipeline.job.run_label`, the bundled model,
default settings) over the same clips, once per sampling per round (order
alternating), and the rows' `decode_cpu_s` (CPU time of the decoding child:
opening the file, reading and decoding; not the resize) and
`frames_decoded`, as the job records them.

Part 3, `profile`: where PyAV's CPU time goes, uniform and keyframe, per clip
size: cProfile with CPU time as its clock over every clip, split into
FFmpeg's decoding (`CodecContext.decode`), conversion to RGB
(`VideoFrame.to_ndarray`), stacking the frames into the clip (`numpy.stack`),
opening the container (`av.open`: header and index) and the rest (Python).

Part 4, `reads`: bytes each decoder reads of a clip, through a file object
that counts them (decord: `VideoReader` on the file object, then
`get_batch` at the centres; PyAV: uniform and keyframe), as a share of the
clip's size.
"""

from __future__ import annotations

# torch before decord, always: with decord2 loaded first, a later torch matrix product
# segfaults the process (their bundled BLAS/OpenMP libraries clash)
import torch  # noqa: F401  isort: skip

import argparse
import bisect
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from upload_corpus import DEFAULT_CACHE, make_corpus, read_manifest  # noqa: E402

SEGMENTS = 8
METHODS = ("decord old path", "decord get_batch", "PyAV uniform", "PyAV keyframe")


# ----------------------------------------------------------------- the decoders
def _seek_cost(keys: list[int], targets: list[int]) -> int:
    """The old decoder's estimate: frames decoded to reach `targets` by seeking."""
    cost, pos = 0, 0
    for t in targets:
        key = keys[max(0, bisect.bisect_right(keys, t) - 1)] if keys else 0
        start = key if key > pos else pos
        cost += t - start + 1
        pos = t + 1
    return cost


def decord_old(uri: str):
    """The pre-PyAV CPU path (a902a57^ decord_cpu.py `_read_frames`), segment centres."""
    import decord
    import numpy as np

    from pipeline.sampling import segment_indices

    vr = decord.VideoReader(uri, ctx=decord.cpu(0), num_threads=1)
    targets = sorted(set(segment_indices(len(vr), SEGMENTS).tolist()))
    if targets[-1] + 1 <= 2 * _seek_cost(vr.get_key_indices(), targets):
        out, pos = {}, 0
        for t in targets:
            while pos < t:
                vr.next()
                pos += 1
            out[t] = vr.next().asnumpy()
            pos += 1
        frames = np.stack([out[t] for t in targets])
        decoded = targets[-1] + 1
    else:
        frames = vr.get_batch(targets).asnumpy()
        decoded = None  # decord does not say
    del vr
    return frames, decoded


def decord_batch(uri: str):
    import decord

    from pipeline.sampling import segment_indices

    vr = decord.VideoReader(uri, ctx=decord.cpu(0), num_threads=1)
    frames = vr.get_batch(segment_indices(len(vr), SEGMENTS).tolist()).asnumpy()
    del vr
    return frames, None


def pyav(sampling: str):
    def run(uri: str):
        from pipeline.decoders import decoder_for
        from pipeline.sampling import sampler

        clip = decoder_for("cpu").decode(uri, sampler(sampling, SEGMENTS))
        return clip.frames, clip.frames_decoded

    return run


def decoder_part(uris: list[str], repeats: int, have_decord: bool) -> dict:
    import numpy as np

    funcs = {"decord old path": decord_old, "decord get_batch": decord_batch,
             "PyAV uniform": pyav("uniform"), "PyAV keyframe": pyav("keyframe")}
    if not have_decord:
        funcs = {k: v for k, v in funcs.items() if not k.startswith("decord")}
    names = list(funcs)
    for uri in uris[:2]:  # untimed: libraries loaded, code paths warm
        for f in funcs.values():
            f(uri)
    per_clip: dict[str, dict[str, dict]] = {}
    identical = []
    for r in range(repeats):
        for i, uri in enumerate(uris):
            k = (i + r) % len(names)
            times: dict[str, float] = {}
            frames = {}
            for name in names[k:] + names[:k]:
                t0 = time.process_time()
                got, decoded = funcs[name](uri)
                times[name] = time.process_time() - t0
                frames[name] = got
                rec = per_clip.setdefault(uri, {}).setdefault(name, {"cpu": [],
                                                                    "decoded": decoded})
                rec["cpu"].append(times[name])
            if r == 0 and have_decord:
                a, b = frames["PyAV uniform"], frames["decord get_batch"]
                identical.append(a.shape == b.shape and bool(np.array_equal(a, b)))
        print(f"  decoders: round {r + 1} of {repeats} done", file=sys.stderr, flush=True)
    return {"per_clip": per_clip, "pyav_uniform_equals_decord": identical}


# ----------------------------------------------------------------- the profile
PROFILE_BUCKETS = {  # cProfile function name -> what it is
    "<method 'decode' of 'av.codec.context.CodecContext' objects>": "FFmpeg decoding",
    "<method 'to_ndarray' of 'av.video.frame.VideoFrame' objects>": "to RGB (to_ndarray)",
    "stack": "numpy.stack (the clip)",
    "<av.container.core.open>": "av.open (header, index)",
}


def profile_part(uris: list[str]) -> dict:
    """{size: {sampling: {bucket: CPU s per clip}}}, from cProfile with a CPU-time clock."""
    import cProfile
    import pstats

    from pipeline.decoders import decoder_for
    from pipeline.sampling import sampler

    out: dict[str, dict] = {}
    decoder = decoder_for("cpu")
    sizes = sorted({size_of(u) for u in uris}, key=lambda s: -int(s.split("x")[1]))
    for size in sizes:
        clips = [u for u in uris if size_of(u) == size]
        for sampling in ("uniform", "keyframe"):
            for uri in clips[:2]:  # untimed warm-up
                decoder.decode(uri, sampler(sampling, SEGMENTS))
            prof = cProfile.Profile(time.process_time)
            prof.enable()
            for uri in clips:
                decoder.decode(uri, sampler(sampling, SEGMENTS))
            prof.disable()
            stats = pstats.Stats(prof)
            buckets = dict.fromkeys([*PROFILE_BUCKETS.values(), "the rest"], 0.0)
            for (_, _, name), (_, _, own, _, _) in stats.stats.items():
                buckets[PROFILE_BUCKETS.get(name, "the rest")] += own / len(clips)
            buckets["total"] = stats.total_tt / len(clips)
            out.setdefault(size, {})[sampling] = buckets
    return out


def profile_table(prof: dict, title: str) -> str:
    names = [*PROFILE_BUCKETS.values(), "the rest", "total"]
    lines = [title, "", "| clips | sampling | " + " | ".join(names) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in names) + " |"]
    for size, by in prof.items():
        for sampling, b in by.items():
            lines.append(f"| {size} | {sampling} | " + " | ".join(
                f"{b[n]:.4f} ({100 * b[n] / b['total']:.0f} %)" if n != "total"
                else f"{b[n]:.4f}" for n in names) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------- the reads
def reads_part(uris: list[str], have_decord: bool) -> dict:
    """{size: {method: mean share of the file read}}"""
    from pipeline.decoders import decoder_for
    from pipeline.sampling import sampler, segment_indices
    from pipeline.store.local import CountingFile  # the job's own byte-counting local file

    shares: dict[str, dict[str, list]] = {}
    for uri in uris:
        size = os.path.getsize(uri)
        got = shares.setdefault(size_of(uri), {})
        if have_decord:
            import decord

            with CountingFile(uri) as f:
                vr = decord.VideoReader(f, ctx=decord.cpu(0), num_threads=1)
                at_open = f.bytes_read
                vr.get_batch(segment_indices(len(vr), SEGMENTS).tolist()).asnumpy()
                del vr
                got.setdefault("decord: VideoReader (open)", []).append(at_open / size)
                got.setdefault("decord: open + get_batch", []).append(f.bytes_read / size)
        for sampling in ("uniform", "keyframe"):
            with CountingFile(uri) as f:
                decoder_for("cpu").decode(f, sampler(sampling, SEGMENTS))
                got.setdefault(f"PyAV {sampling}", []).append(f.bytes_read / size)
    return {size: {m: statistics.mean(v) for m, v in by.items()} for size, by in shares.items()}


# ----------------------------------------------------------------- the job
def job_part(manifest: Path, repeats: int, model: str, work: Path) -> dict:
    import pyarrow.dataset as ds
    import ray

    from pipeline.job import run_label
    from pipeline.settings import LabelConfig

    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    rows: dict[str, dict[str, list]] = {}
    try:
        # untimed: a first run warms Ray's workers and their decoding children
        warm = work / "warm.csv"
        warm.write_text("uri\n" + "".join(f"{u}\n" for u in read_manifest(manifest)[:2]))
        run_label(LabelConfig(input=str(warm), output=str(work / "out-warm"), model=model,
                              embeddings=False))
        for r in range(repeats):
            order = ("uniform", "keyframe") if r % 2 == 0 else ("keyframe", "uniform")
            for sampling in order:
                out = work / f"out-{sampling}-{r}"
                run_label(LabelConfig(input=str(manifest), output=str(out), model=model,
                                      sampling=sampling, embeddings=False))
                table = ds.dataset(str(out), format="parquet").to_table(
                    columns=["video_uri", "status", "decode_cpu_s", "frames_decoded"])
                for row in table.to_pylist():
                    if row["status"] != "ok":
                        raise SystemExit(f"error: {row['video_uri']}: not labelled")
                    rec = rows.setdefault(row["video_uri"], {}).setdefault(
                        sampling, {"cpu": [], "decoded": row["frames_decoded"]})
                    rec["cpu"].append(row["decode_cpu_s"])
            print(f"  job: round {r + 1} of {repeats} done", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    return {"per_clip": rows}


# ----------------------------------------------------------------- the report
def size_of(uri: str) -> str:
    return Path(uri).stem.rsplit("-", 1)[-1]


def summarise(per_clip: dict, methods: list[str]) -> dict:
    """{size: {method: {"cpu_s": mean of per-clip medians, "frames_decoded": mean}}}"""
    out: dict[str, dict] = {}
    sizes = sorted({size_of(u) for u in per_clip}, key=lambda s: -int(s.split("x")[1]))
    for size in sizes:
        clips = [c for u, c in per_clip.items() if size_of(u) == size]
        out[size] = {}
        for m in methods:
            meds = [statistics.median(c[m]["cpu"]) for c in clips if m in c]
            if not meds:
                continue
            decoded = [c[m]["decoded"] for c in clips if c[m]["decoded"] is not None]
            out[size][m] = {"clips": len(meds), "cpu_s": statistics.mean(meds),
                            "frames_decoded": statistics.mean(decoded) if decoded else None}
    return out


def table(summary: dict, methods: list[str], ref: str, title: str) -> str:
    lines = [title, "",
             "| clips | method | CPU s / video | frames decoded / video | "
             f"{ref} / this |",
             "| --- | --- | ---: | ---: | ---: |"]
    for size, ms in summary.items():
        for m in methods:
            if m not in ms:
                continue
            s = ms[m]
            fd = f"{s['frames_decoded']:.1f}" if s["frames_decoded"] is not None else "?"
            ratio = ms[ref]["cpu_s"] / s["cpu_s"] if ref in ms else float("nan")
            lines.append(f"| {size} ({s['clips']}) | {m} | {s['cpu_s']:.3f} | {fd} | "
                         f"{ratio:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=40, help="clips, the sizes in turn")
    p.add_argument("--sizes", default="1280x720,640x360", help="WxH list, in turn")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    p.add_argument("--gop", type=int, default=50, help="frames between keyframes (25 fps)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where clips are kept")
    p.add_argument("--repeats", type=int, default=3, help="decoder rounds per clip")
    p.add_argument("--job-repeats", type=int, default=2, help="label runs per sampling")
    p.add_argument("--parts", default="decoders,job", help="decoders, job or both")
    p.add_argument("--model", default=str(ROOT / "tsm_model" / "bundled"),
                   help="the job's model (decoding does not depend on it)")
    p.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = p.parse_args()
    parts = {x.strip() for x in args.parts.split(",")}
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    manifest = make_corpus(args.count, args.duration, sizes=args.sizes.split(","),
                           gop=args.gop, cache=args.cache)
    uris = read_manifest(manifest)
    for u in uris:  # the page cache holds every clip before anything is timed
        Path(u).read_bytes()
    try:
        import decord  # noqa: F401

        have_decord = True
    except ImportError:
        have_decord = False
        print("decord is not installed (the bench extra): its rows are left out",
              file=sys.stderr)
    load0 = os.getloadavg()[0]
    results: dict = {"command": command, "started": started, "manifest": str(manifest),
                     "clips": len(uris), "machine": {"nproc": os.cpu_count(),
                                                     "kernel": platform.release()}}
    report = []
    clip_desc = (f"{len(uris)} upload-like clips ({args.duration:g} s, 25 fps, GOP "
                 f"{args.gop}, B-frames; {args.sizes}), {SEGMENTS} segments")
    if "decoders" in parts:
        dec = decoder_part(uris, args.repeats, have_decord)
        methods = [m for m in METHODS if have_decord or not m.startswith("decord")]
        summary = summarise(dec["per_clip"], methods)
        same = dec["pyav_uniform_equals_decord"]
        results["decoders"] = {"summary": summary, **dec}
        ref = "decord old path" if have_decord else "PyAV uniform"
        report += [table(summary, methods, ref,
                         f"Decoders alone, one process, {clip_desc}; CPU s per video: mean "
                         f"over clips of the median of {args.repeats} rounds"), ""]
        if same:
            report += [f"- PyAV uniform pixel-identical to decord get_batch on "
                       f"{sum(same)} of {len(same)} clips", ""]
        for size, ms in summary.items():
            if "PyAV uniform" in ms and "PyAV keyframe" in ms:
                report.append(f"- {size}: PyAV uniform / PyAV keyframe "
                              f"{ms['PyAV uniform']['cpu_s'] / ms['PyAV keyframe']['cpu_s']:.2f}x")
        report.append("")
    if "profile" in parts:
        prof = profile_part(uris)
        results["profile"] = prof
        report += [profile_table(prof, f"Where PyAV's CPU time goes (cProfile, CPU clock), "
                                       f"{clip_desc}; CPU s per clip (share)"), ""]
    if "reads" in parts:
        reads = reads_part(uris, have_decord)
        results["reads"] = reads
        report += [f"Bytes read of a clip, as a share of its size (mean over clips), "
                   f"{clip_desc}", "", "| clips | method | share of the file read |",
                   "| --- | --- | ---: |"]
        report += [f"| {size} | {m} | {100 * share:.1f} % |"
                   for size, by in reads.items() for m, share in by.items()]
        report.append("")
    if "job" in parts:
        work = Path(tempfile.mkdtemp(prefix="decode-cost-"))
        job = job_part(manifest, args.job_repeats, args.model, work)
        summary = summarise(job["per_clip"], ["uniform", "keyframe"])
        results["job"] = {"summary": summary, **job}
        report += [table(summary, ["uniform", "keyframe"], "uniform",
                         f"The label job (`tsm label`, default flags, bundled model), "
                         f"{clip_desc}; the rows' decode_cpu_s: mean over clips of the median "
                         f"of {args.job_repeats} runs per sampling"), ""]
    load1 = os.getloadavg()[0]
    report += [f"- 1-min load average {load0:.1f} at the start, {load1:.1f} at the end; "
               f"nproc {os.cpu_count()}; started {started}",
               f"- command: `{command}`"]
    md = "\n".join(report)
    results["markdown"] = md
    print(md)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
