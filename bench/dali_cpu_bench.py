"""DALI's CPU backend against the CPU decoder (PyAV): pixels, model input, time per video.

Three measurements, on test videos made here with ffmpeg (cached in --cache):

1. **pixels**: the sampled frames from DALI (`DaliBatchDecoder.decode_frames`)
   against the CPU decoder's and against ffmpeg's own decode (`select=eq(n,K)`, rgb24):
   per frame the mean absolute difference (0-255), and over all pixels the
   99th percentile and the maximum; on testsrc2 (saturated colour bars: the
   worst case for chroma) and on a smoother source (testsrc2 blurred, sigma 2),
   VP9 (yuv420p) and MJPEG (yuvj420p);
2. **model input**: the clips DALI's graph makes (resize 256, crop 224,
   normalise) against the CPU path's `normalize(resize_crop(CPU decoder frames))`,
   in normalised units; and DALI's own frames through the CPU path's
   preprocessing, which isolates the resize from the decoding;
3. **time per video**: 10 s, 25 fps, 640x360 VP9 clips, 8 segment-centre
   frames, from bytes in memory to a `(8, 3, 224, 224)` uint8 clip: the
   CPU decode stage's way (`PyAVDecoder` on a BytesIO, then `resize_crop`)
   against `DaliBatchDecoder(device="cpu")` with batches of 1 and 4, one
   decoder thread each; interleaved repetitions, wall and process CPU time.

    .venv/bin/python bench/dali_cpu_bench.py --json /tmp/dali_cpu.json
    .venv/bin/python bench/dali_cpu_bench.py --quick            # fewer repeats
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import videos  # noqa: E402

from pipeline.decoders import decoder_for  # noqa: E402
from pipeline.decoders.dali import DaliBatchDecoder, DaliSpec, EncodedClip  # noqa: E402
from pipeline.sampling import sampler as make_sampler  # noqa: E402
from pipeline.sampling import segment_indices  # noqa: E402
from pipeline.transforms import normalize, resize_crop  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VP9 = ("-c:v", "libvpx-vp9", "-deadline", "good", "-cpu-used", "5", "-row-mt", "1",
       "-b:v", "1M", "-threads", "2")
MJPEG = ("-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p")
SOURCES = {"testsrc2": None, "smooth": "gblur=sigma=2"}


def make(cache: Path, name: str, codec: tuple[str, ...], suffix: str, size: str, seconds: int,
         vf: str | None, gop: int = 50) -> Path:
    path = cache / f"{name}{suffix}"
    if not path.exists():
        filters = ["-vf", vf] if vf else []
        videos._run(["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25", "-t", str(seconds),
                     *filters, *codec, "-g", str(gop), str(path)])
    return path


def cpu_frames(raw: bytes, indices: np.ndarray) -> np.ndarray:
    clip = decoder_for("cpu").decode(io.BytesIO(raw), lambda n: indices)
    return clip.frames


def pixel_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    per_frame = d.reshape(d.shape[0], -1).mean(axis=1)
    return {"frame_mad_mean": float(per_frame.mean()), "frame_mad_max": float(per_frame.max()),
            "p99": float(np.percentile(d, 99)), "max": int(d.max())}


def float_stats(a, b) -> dict[str, float]:
    d = (a.float() - b.float()).abs().flatten().numpy()
    return {"mean": float(d.mean()), "p99": float(np.percentile(d, 99)), "max": float(d.max())}


def measure_pixels(cache: Path, size: str) -> list[dict]:
    dali = DaliBatchDecoder(DaliSpec(device="cpu", batch_size=1, resize_size=256, input_size=224,
                                     output="float", num_threads=1))
    rows = []
    for source, vf in SOURCES.items():
        for codec, args, suffix in (("vp9", VP9, ".webm"), ("mjpeg", MJPEG, ".avi")):
            path = make(cache, f"pix_{source}_{codec}_{size}", args, suffix, size, 4, vf)
            raw = path.read_bytes()
            idx = segment_indices(100, 8)
            (frames,), (err,) = dali.decode_frames([EncodedClip(raw, idx)])
            assert err is None, err
            ours = frames.numpy()
            ref_cpu = cpu_frames(raw, idx)
            ref_ffmpeg = np.stack([videos.reference_frame(path, int(k)) for k in idx])
            batch = dali.decode([EncodedClip(raw, idx)])
            cpu_path = normalize(torch.from_numpy(resize_crop(ref_cpu, 256, 224)), MEAN, STD)
            same_frames = normalize(torch.from_numpy(resize_crop(ours, 256, 224)), MEAN, STD)
            rows.append({
                "source": source, "codec": codec, "size": size,
                "vs_cpu": pixel_stats(ours, ref_cpu),
                "vs_ffmpeg": pixel_stats(ours, ref_ffmpeg),
                "cpu_vs_ffmpeg": pixel_stats(ref_cpu, ref_ffmpeg),
                "model_input_vs_cpu_path": float_stats(batch.clips[0], cpu_path),
                "preprocessing_only": float_stats(batch.clips[0], same_frames),
            })
    return rows


def _seconds(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure_time(cache: Path, reps: int, clips: int) -> dict:
    paths = [make(cache, f"time_{i}_vp9_640x360", VP9, ".webm", "640x360", 10,
                  "hue=H=2*PI*t/10" if i % 2 else None) for i in range(clips)]
    blobs = [p.read_bytes() for p in paths]
    num_frames = 250
    idx = segment_indices(num_frames, 8)
    sampler = make_sampler("uniform", 8)
    cpu_decoder = decoder_for("cpu")
    dali1 = DaliBatchDecoder(DaliSpec(device="cpu", batch_size=1, num_threads=1))
    dali4 = DaliBatchDecoder(DaliSpec(device="cpu", batch_size=4, num_threads=1))

    def cpu_path():
        for raw in blobs:
            clip = cpu_decoder.decode(io.BytesIO(raw), sampler)
            resize_crop(clip.frames, 256, 224)

    def dali_b1():
        for raw in blobs:
            assert dali1.decode([EncodedClip(raw, idx)]).errors == [None]

    def dali_b4():
        for start in range(0, len(blobs), 4):
            part = blobs[start:start + 4]
            errors = dali4.decode([EncodedClip(raw, idx) for raw in part]).errors
            assert errors == [None] * len(part)

    def cpu_decode_only():
        for raw in blobs:
            cpu_decoder.decode(io.BytesIO(raw), sampler)

    def dali_decode_only():
        for raw in blobs:
            dali1.decode_frames([EncodedClip(raw, idx)])

    fns = {"cpu decoder + resize_crop": cpu_path, "DALI CPU, batch 1": dali_b1,
           "DALI CPU, batch 4": dali_b4, "CPU decoder, decode only": cpu_decode_only,
           "DALI decode only": dali_decode_only}
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(_seconds(fns[name]))
    base = "cpu decoder + resize_crop"
    out = {}
    for name, ts in times.items():
        wall = [w / len(blobs) * 1000 for w, _ in ts]
        cpu = [c / len(blobs) * 1000 for _, c in ts]
        ratios = [w / b for (w, _), (b, _) in zip(ts, times[base], strict=True)]
        out[name] = {"wall_ms_median": statistics.median(wall),
                     "cpu_ms_median": statistics.median(cpu),
                     "wall_ratio_to_cpu_path_median": statistics.median(ratios)}
    return {"clips": len(blobs), "reps": reps, "indices": idx.tolist(), "results": out}


def markdown(result: dict) -> str:
    lines = ["| source | codec | size | DALI vs CPU decoder: frame MAD mean / max, p99, max "
             "| DALI vs ffmpeg | CPU decoder vs ffmpeg | model input vs CPU path: mean / p99 / max "
             "| resize+crop only: mean / p99 / max |", "|---" * 8 + "|"]
    for r in result["pixels"]:
        def px(s):
            return (f"{s['frame_mad_mean']:.2f} / {s['frame_mad_max']:.2f}, {s['p99']:.0f}, "
                    f"{s['max']}")

        def fl(s):
            return f"{s['mean']:.4f} / {s['p99']:.3f} / {s['max']:.3f}"

        lines.append(f"| {r['source']} | {r['codec']} | {r['size']} | {px(r['vs_cpu'])} | "
                     f"{px(r['vs_ffmpeg'])} | {px(r['cpu_vs_ffmpeg'])} | "
                     f"{fl(r['model_input_vs_cpu_path'])} | {fl(r['preprocessing_only'])} |")
    if "time" in result:
        t = result["time"]
        lines += ["", f"{t['clips']} clips x {t['reps']} interleaved repetitions, per video:", "",
                  "| method | wall ms (median) | process CPU ms (median) | wall / CPU path |",
                  "|---|---|---|---|"]
        for name, v in t["results"].items():
            lines.append(f"| {name} | {v['wall_ms_median']:.0f} | {v['cpu_ms_median']:.0f} | "
                         f"{v['wall_ratio_to_cpu_path_median']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "tsm-labeller" / "dali-bench")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="3 repetitions, 2 clips")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--no-time", action="store_true")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    reps, clips = (3, 2) if args.quick else (args.reps, args.clips)
    result: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                "load_avg": os.getloadavg(), "torch": torch.__version__}}
    import nvidia.dali

    result["machine"]["dali"] = nvidia.dali.__version__
    result["pixels"] = measure_pixels(args.cache, "320x240") + measure_pixels(args.cache, "640x360")
    if not args.no_time:
        result["time"] = measure_time(args.cache, reps, clips)
    result["machine"]["load_avg_end"] = os.getloadavg()
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
