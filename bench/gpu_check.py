#!/usr/bin/env python3
"""One run on a GPU box with no network: what the model stage can do there, and what
decoding is possible without DALI.

The box has PyTorch (CUDA build), numpy and pyarrow, and a copy of this repository
(`bench/gpu_check.sh --pack` makes a ~100 KB archive of the files this needs); nothing
else can be installed. So:

- the TSM networks come from the project's own `tsm_model` (`tsm_model.tsm.build`),
  imported without its package `__init__` (which needs safetensors) and, when
  torchvision is missing, with `bench/tv_lite.py` standing in for its ResNet and
  MobileNetV2 (same modules, parameters and forward pass; checked against
  torchvision in tests/test_gpu_check.py);
- DALI's wheel (~420 MB) cannot be copied, so DALI decoding is not measured here;
  what is: torch's own preprocessing on the GPU (resize, crop, normalise),
  host-to-device copies of uint8 clips, and, if an ffmpeg binary happens to be
  installed, FFmpeg's NVDEC decoding (`-hwaccel cuda`) against its CPU decoding.

Measured: TSM ResNet-50 and MobileNetV2, 8 frames of 224x224, 400 classes, random
weights, `logits_and_features` on normalised uint8 clips as the model stage runs it,
in fp32, bf16 autocast, channels_last + bf16, and torch.compile + channels_last + bf16
(compile time apart); batch sizes 8 to 256; clips/s in steady state (warm-up, then
iterations until a minimum time, each synchronised) and peak GPU memory
(torch.cuda.max_memory_allocated). Anything that fails is reported as a "SKIP" line
with the reason and the run goes on; a time budget skips what would not fit.

    bench/gpu_check.sh                          # full run, about 8 minutes
    python bench/gpu_check.py --quick           # about 3 minutes
    python bench/gpu_check.py --cpu-smoke       # tiny sizes on the CPU: the same code paths

Results: printed as they come, and written to --out (results.json, results.md) after
every measurement, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VARIANTS = ("fp32", "bf16", "channels_last+bf16", "compile+channels_last+bf16")


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Plan:
    device: str
    archs: tuple[str, ...]
    batches: tuple[int, ...]
    compile_batches: tuple[int, ...]
    frames: int
    size: int
    classes: int
    warmup: int
    min_iters: int
    min_time_s: float
    copy_batches: tuple[int, ...]
    preprocess_sources: tuple[tuple[int, int], ...]  # (width, height) of decoded frames
    preprocess_clips: int
    decode_seconds: int
    decode_sizes: tuple[tuple[int, int], ...]
    budget_s: float


def make_plan(args) -> Plan:
    if args.cpu_smoke:
        return Plan("cpu", ("resnet50", "mobilenetv2"), (1, 2), (1,), 2, 32, 400, 1, 2, 0.05,
                    (2,), ((160, 120),), 2, 1, ((160, 120),), args.budget_s or 240)
    if args.quick:
        return Plan("cuda", ("resnet50", "mobilenetv2"), (8, 64, 256), (64,), 8, 224, 400, 2,
                    3, 0.5, (32, 128), ((640, 360), (1920, 1080)), 32, 5,
                    ((1920, 1080),), args.budget_s or 200)
    return Plan("cuda", ("resnet50", "mobilenetv2"), (8, 16, 32, 64, 128, 256), (32, 128), 8,
                224, 400, 3, 5, 1.0, (32, 128), ((640, 360), (1920, 1080)), 64, 10,
                ((640, 360), (1920, 1080)), args.budget_s or 440)


# ----------------------------------------------------------------------------- the report
class Report:
    """Lines for people, records for machines; both saved after every record."""

    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self.budget_s = budget_s
        self.start = time.monotonic()
        self.records: list[dict] = []
        self.lines: list[str] = []
        self.env: dict = {}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def line(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def add(self, section: str, **fields) -> dict:
        record = {"section": section, **fields}
        self.records.append(record)
        self.save()
        return record

    def skip(self, section: str, what: str, why: str) -> None:
        self.line(f"SKIP {section}: {what}: {why}")
        self.add(section, what=what, status="skipped", reason=why)

    def save(self) -> None:
        data = {"env": self.env, "records": self.records,
                "elapsed_s": round(time.monotonic() - self.start, 1)}
        (self.out / "results.json").write_text(json.dumps(data, indent=1, default=str))
        (self.out / "results.md").write_text(markdown(self.env, self.records, self.lines))


def why(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- environment
def optional_modules() -> dict[str, str]:
    found = {}
    for name in ("numpy", "pyarrow", "torchvision", "safetensors", "nvidia.dali", "decord", "av",
                 "triton"):
        try:
            module = importlib.import_module(name)
            found[name] = str(getattr(module, "__version__", "present"))
        except Exception as e:
            found[name] = f"absent ({type(e).__name__})"
    return found


def environment(report: Report, plan: Plan) -> None:
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "cpus": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "device": plan.device, "modules": optional_modules(),
           "cudnn_benchmark": torch.backends.cudnn.benchmark,
           "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
           "cudnn_tf32": torch.backends.cudnn.allow_tf32}
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=list(torch.cuda.get_device_capability(0)),
                   gpu_count=torch.cuda.device_count())
        env["nvdec_routing_caps"] = routing_caps(tuple(env["compute_capability"]))
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(Exception):
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                 "power.limit", "--format=csv,noheader"], capture_output=True, text=True,
                timeout=20).stdout.strip()
    report.env = env
    for key, value in env.items():
        report.line(f"env {key}: {value}")
    report.save()


def routing_caps(capability: tuple[int, int]) -> str:
    """The NVDEC caps the project's routing table assumes for this GPU."""
    try:
        sys.path.insert(0, str(ROOT))
        spec = importlib.util.spec_from_file_location(
            "_routing", ROOT / "pipeline" / "decoders" / "routing.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["_routing"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        caps = module.caps_for(capability)
        return f"{caps.name}: av1={caps.av1}, h264_8k={caps.h264_8k}"
    except Exception as e:
        return f"unknown ({why(e)})"


# ----------------------------------------------------------------------------- the model
def import_tsm(report: Report):
    """(TSMConfig, build) from the project's tsm_model with nothing but torch installed."""
    notes = {}
    try:
        import torchvision

        notes["torchvision"] = torchvision.__version__
    except Exception as e:
        sys.path.insert(0, str(HERE))
        import tv_lite

        tv_lite.install()
        notes["torchvision"] = f"absent ({type(e).__name__}): bench/tv_lite.py stands in"
    sys.path.insert(0, str(ROOT))
    try:
        importlib.import_module("tsm_model")
        notes["tsm_model"] = "the package"
    except ImportError as e:  # its __init__ imports the checkpoint code, which needs safetensors
        for name in [m for m in sys.modules if m == "tsm_model" or m.startswith("tsm_model.")]:
            del sys.modules[name]
        import types

        stub = types.ModuleType("tsm_model")
        stub.__path__ = [str(ROOT / "tsm_model")]
        sys.modules["tsm_model"] = stub
        notes["tsm_model"] = f"network modules only ({why(e)})"
    from tsm_model.config import TSMConfig
    from tsm_model.tsm import build

    for key, value in notes.items():
        report.line(f"env {key}: {value}")
    report.env.update(notes)
    return TSMConfig, build


def normalize(x: torch.Tensor) -> torch.Tensor:
    """As the model stage: uint8 (..., 3, H, W) -> float, [0, 1], per-channel mean/std."""
    m = torch.tensor(MEAN, device=x.device).view(3, 1, 1)
    s = torch.tensor(STD, device=x.device).view(3, 1, 1)
    return x.float().div_(255.0).sub_(m).div_(s)


def timed(step, plan: Plan) -> tuple[float, int]:
    """(seconds per iteration, iterations) in steady state, each iteration synchronised."""
    for _ in range(plan.warmup):
        step()
    sync(plan.device)
    times = []
    begin = time.perf_counter()
    while len(times) < plan.min_iters or time.perf_counter() - begin < plan.min_time_s:
        t = time.perf_counter()
        step()
        sync(plan.device)
        times.append(time.perf_counter() - t)
        if len(times) >= 1000:
            break
    return statistics.median(times), len(times)


def model_variant(build, config, variant: str, device: str):
    model = build(config).eval().to(device)
    if "channels_last" in variant:
        model = model.to(memory_format=torch.channels_last)
    if variant.startswith("compile"):
        model = torch.compile(model, dynamic=False)
    return model


def bench_models(report: Report, plan: Plan, TSMConfig, build, compiled: bool) -> None:
    """The eager variants (compiled=False) or the torch.compile one, for every arch."""
    autocast_device = "cuda" if plan.device == "cuda" else "cpu"
    for arch in plan.archs:
        config = TSMConfig(arch=arch, num_classes=plan.classes, num_segments=plan.frames,
                           input_size=plan.size, resize_size=plan.size)
        for variant in VARIANTS:
            if variant.startswith("compile") != compiled:
                continue
            batches = plan.compile_batches if compiled else plan.batches
            try:
                model = model_variant(build, config, variant, plan.device)
            except Exception as e:
                report.skip("model", f"{arch} {variant}", why(e))
                continue
            for batch in batches:
                what = f"{arch} {variant} B={batch}"
                need = 90 if compiled else 10 + 2 * plan.min_time_s
                if report.left() < need:
                    report.skip("model", what, f"time budget ({report.left():.0f} s left)")
                    continue
                ok = bench_one(report, plan, model, arch, variant, batch, autocast_device)
                if not ok:
                    break  # out of memory (or broken): larger batches will not do better
            del model
            free(plan.device)


def bench_one(report: Report, plan: Plan, model, arch: str, variant: str, batch: int,
              autocast_device: str) -> bool:
    what = f"{arch} {variant} B={batch}"
    bf16 = "bf16" in variant
    clips = None
    try:
        if plan.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        clips = torch.randint(0, 256, (batch, plan.frames, 3, plan.size, plan.size),
                              dtype=torch.uint8, device=plan.device)
        step = functools.partial(forward, model, clips, autocast_device if bf16 else None)

        compile_s = None
        if variant.startswith("compile"):
            t = time.perf_counter()
            step()
            sync(plan.device)
            compile_s = time.perf_counter() - t
        seconds, iters = timed(step, plan)
        peak = torch.cuda.max_memory_allocated() / 2**30 if plan.device == "cuda" else None
    except Exception as e:
        status = "oom" if is_oom(e) else "failed"
        report.skip("model", what, ("out of memory: " if status == "oom" else "") + why(e))
        clips = step = None
        free(plan.device)
        return False
    rate = batch / seconds
    extra = f", compile {compile_s:.1f} s" if compile_s is not None else ""
    mem = f", peak {peak:.2f} GiB" if peak is not None else ""
    report.line(f"model {what}: {rate:.1f} clips/s ({rate * plan.frames:.0f} frames/s), "
                f"{seconds * 1000:.1f} ms/batch, {iters} iterations{mem}{extra}")
    report.add("model", what=what, arch=arch, variant=variant, batch=batch,
               clips_per_s=round(rate, 2), ms_per_batch=round(seconds * 1000, 3),
               iterations=iters, peak_gib=None if peak is None else round(peak, 3),
               compile_s=None if compile_s is None else round(compile_s, 1), status="ok")
    return True


def forward(model, clips: torch.Tensor, autocast_device: str | None):
    """The model stage's forward: normalise uint8 clips, logits and embedding, softmax."""
    cast = (torch.autocast(autocast_device, dtype=torch.bfloat16) if autocast_device
            else contextlib.nullcontext())
    with torch.inference_mode(), cast:
        logits, emb = model.logits_and_features(normalize(clips))
        return torch.softmax(logits.float(), dim=1), emb


# ----------------------------------------------------------------------------- copies
def bench_copies(report: Report, plan: Plan) -> None:
    if plan.device != "cuda":
        report.skip("copy", "host to device", "no CUDA device (pinned memory needs CUDA)")
        return
    for batch in plan.copy_batches:
        shape = (batch, plan.frames, 3, plan.size, plan.size)
        try:
            pageable = torch.randint(0, 256, shape, dtype=torch.uint8)
            pinned = pageable.pin_memory()
            target = torch.empty(shape, dtype=torch.uint8, device="cuda")
            gib = pageable.numel() / 2**30
            cases = {
                "pageable": functools.partial(target.copy_, pageable),
                "pinned, non_blocking": functools.partial(target.copy_, pinned,
                                                          non_blocking=True),
                # what an actor pays to use pinned memory for a batch it received pageable
                "pin_memory() then copy": functools.partial(pin_and_copy, pageable, target),
            }
            for name, fn in cases.items():
                seconds, _ = timed(fn, plan)
                report.line(f"copy B={batch} ({gib * 1024:.0f} MiB uint8) {name}: "
                            f"{seconds * 1000:.2f} ms, {gib / seconds:.1f} GiB/s")
                report.add("copy", what=f"B={batch} {name}", batch=batch, kind=name,
                           mib=round(gib * 1024, 1), ms=round(seconds * 1000, 3),
                           gib_per_s=round(gib / seconds, 2), status="ok")
        except Exception as e:
            report.skip("copy", f"B={batch}", why(e))
        pageable = pinned = target = cases = None
        free(plan.device)


def pin_and_copy(pageable: torch.Tensor, target: torch.Tensor) -> None:
    target.copy_(pageable.pin_memory(), non_blocking=True)


def resize_crop_normalize(frames: torch.Tensor, size: tuple[int, int], crop: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float (N, 3, crop, crop): antialiased bilinear resize to `size`,
    back to uint8 as the CPU path keeps it, centre crop, normalise."""
    x = torch.nn.functional.interpolate(frames.float(), size=size, mode="bilinear",
                                        antialias=True, align_corners=False)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    x = x[:, :, top:top + crop, left:left + crop]
    return normalize(x.round_().clamp_(0, 255).to(torch.uint8))


# ----------------------------------------------------------------------------- preprocessing
def bench_preprocess(report: Report, plan: Plan) -> None:
    """Decoded frames -> model input on the device with torch alone: what DALI's resize, crop
    and normalise replace (antialiased bilinear, shorter side to 256/224*size, centre crop)."""
    resize = round(plan.size * 256 / 224)
    for width, height in plan.preprocess_sources:
        n = plan.preprocess_clips * plan.frames
        what = f"{plan.preprocess_clips} clips x {plan.frames} frames {width}x{height}"
        try:
            frames = torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8,
                                   device=plan.device)
            short = min(width, height)
            size = (resize * height // short, resize * width // short)
            step = functools.partial(resize_crop_normalize, frames, size, plan.size)
            seconds, _ = timed(step, plan)
            per_clip = seconds / plan.preprocess_clips * 1000
            report.line(f"preprocess {what}: {seconds * 1000:.2f} ms, {per_clip:.3f} ms/clip")
            report.add("preprocess", what=what, ms=round(seconds * 1000, 3),
                       ms_per_clip=round(per_clip, 4), status="ok")
        except Exception as e:
            report.skip("preprocess", what, why(e))
        frames = step = None
        free(plan.device)


# ----------------------------------------------------------------------------- decoding
def ffmpeg_run(args: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-y", *args],
                          capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - t, proc


def bench_decode(report: Report, plan: Plan) -> None:
    """Without DALI: torch has no video decoder; an ffmpeg binary, if present, shows NVDEC's
    speed (`-hwaccel cuda`) against FFmpeg's CPU decoder on the same clip."""
    report.line("decode: DALI is not installed here (its wheel cannot be copied); torch has no "
                "video decoder of its own; torchvision.io (if present) decodes JPEG on the GPU, "
                "not video")
    if not shutil.which("ffmpeg"):
        report.skip("decode", "ffmpeg", "no ffmpeg binary on this machine: nothing can decode "
                                        "video here without DALI")
        return
    try:
        version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True,
                                 timeout=20).stdout.splitlines()[0]
        hwaccels = subprocess.run(["ffmpeg", "-hide_banner", "-hwaccels"], capture_output=True,
                                  text=True, timeout=20).stdout.split()[3:]
        encoders = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True,
                                  text=True, timeout=20).stdout
    except Exception as e:
        report.skip("decode", "ffmpeg", why(e))
        return
    report.line(f"decode: {version}; hwaccels: {hwaccels}")
    report.env.update(ffmpeg=version, ffmpeg_hwaccels=hwaccels)
    codec = next((c for c in ("libx264", "h264_nvenc", "mpeg4") if re.search(rf"\b{c}\b",
                                                                              encoders)), None)
    if codec is None:
        report.skip("decode", "make a clip", "no H.264 or MPEG-4 encoder in this ffmpeg")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in plan.decode_sizes:
            if report.left() < 30:
                report.skip("decode", f"{width}x{height}", "time budget")
                continue
            clip = Path(tmp) / f"clip_{width}x{height}.mp4"
            frames = plan.decode_seconds * 30
            _, made = ffmpeg_run(["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=30",
                                  "-t", str(plan.decode_seconds), "-c:v", codec, "-g", "60",
                                  "-pix_fmt", "yuv420p", str(clip)], 120)
            if made.returncode != 0:
                report.skip("decode", f"make {clip.name} with {codec}", made.stderr[-300:])
                continue
            cases = {"cpu, 1 thread": ["-threads", "1", "-i", str(clip)],
                     "cpu, all threads": ["-i", str(clip)]}
            if "cuda" in hwaccels:
                cases["nvdec (-hwaccel cuda)"] = ["-hwaccel", "cuda", "-hwaccel_output_format",
                                                  "cuda", "-i", str(clip)]
            else:
                report.skip("decode", "nvdec", "this ffmpeg has no cuda hwaccel")
            for name, args in cases.items():
                ffmpeg_decode(report, f"{codec} {width}x{height} {name}", args, frames, 1)
            if "cuda" in hwaccels:
                ffmpeg_decode(report, f"{codec} {width}x{height} nvdec, 4 processes",
                              cases["nvdec (-hwaccel cuda)"], frames, 4)


def ffmpeg_decode(report: Report, what: str, args: list[str], frames: int, procs: int) -> None:
    try:
        t = time.perf_counter()
        running = [subprocess.Popen(["ffmpeg", "-hide_banner", "-nostdin", *args, "-f", "null",
                                     "-"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True) for _ in range(procs)]
        errors = [p.communicate(timeout=120)[1] for p in running]
        seconds = time.perf_counter() - t
        failed = [e for p, e in zip(running, errors, strict=True) if p.returncode != 0]
        if failed:
            report.skip("decode", what, failed[0].strip().splitlines()[-1][:300])
            return
    except Exception as e:
        report.skip("decode", what, why(e))
        return
    fps = frames * procs / seconds
    report.line(f"decode {what}: {fps:.0f} frames/s ({seconds:.2f} s for {frames * procs})")
    report.add("decode", what=what, fps=round(fps, 1), seconds=round(seconds, 3), status="ok")


# ----------------------------------------------------------------------------- markdown
def markdown(env: dict, records: list[dict], lines: list[str]) -> str:
    out = ["# GPU check", ""]
    for key in ("gpu", "gpu_memory_gib", "compute_capability", "nvidia_smi", "torch",
                "torch_cuda", "cudnn", "torchvision", "tsm_model", "nvdec_routing_caps",
                "ffmpeg"):
        if key in env:
            out.append(f"- {key}: {env[key]}")
    models = [r for r in records if r["section"] == "model" and r.get("status") == "ok"]
    for arch in dict.fromkeys(r["arch"] for r in models):
        rows = [r for r in models if r["arch"] == arch]
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        out += ["", f"## {arch}: clips/s (peak GiB)", "",
                "| batch | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
        for batch in sorted({r["batch"] for r in rows}):
            cells = []
            for v in variants:
                hit = [r for r in rows if r["batch"] == batch and r["variant"] == v]
                if hit:
                    peak = hit[0]["peak_gib"]
                    cells.append(f"{hit[0]['clips_per_s']:.0f}" +
                                 (f" ({peak:.1f})" if peak is not None else ""))
                else:
                    cells.append("")
            out.append(f"| {batch} | " + " | ".join(cells) + " |")
        compiles = [r for r in rows if r.get("compile_s") is not None]
        if compiles:
            out.append("")
            out.append("compile time: " + ", ".join(f"B={r['batch']} {r['compile_s']} s"
                                                    for r in compiles))
    for section, fields in (("copy", ("ms", "gib_per_s")), ("preprocess", ("ms", "ms_per_clip")),
                            ("decode", ("fps", "seconds"))):
        rows = [r for r in records if r["section"] == section and r.get("status") == "ok"]
        if rows:
            out += ["", f"## {section}", "", "| what | " + " | ".join(fields) + " |",
                    "|---" * (len(fields) + 1) + "|"]
            out += [f"| {r['what']} | " + " | ".join(str(r[f]) for f in fields) + " |"
                    for r in rows]
    skipped = [r for r in records if r.get("status") == "skipped"]
    if skipped:
        out += ["", "## skipped", ""] + [f"- {r['section']} {r['what']}: {r['reason']}"
                                          for r in skipped]
    out += ["", "## log", "", "```", *lines, "```", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer batch sizes, shorter timing")
    mode.add_argument("--cpu-smoke", action="store_true",
                      help="tiny sizes on the CPU: checks the code paths, measures nothing")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_results"),
                        help="folder for results.json and results.md")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop starting measurements after this many seconds")
    parser.add_argument("--archs", help="override the architectures, comma separated")
    parser.add_argument("--batches", help="override the batch sizes (eager), comma separated")
    parser.add_argument("--only", default="copy,preprocess,model,decode,compile",
                        help="sections to run, comma separated")
    args = parser.parse_args(argv)
    plan = make_plan(args)
    if args.archs:
        plan = dataclasses.replace(plan, archs=tuple(args.archs.split(",")))
    if args.batches:
        plan = dataclasses.replace(plan, batches=tuple(int(b) for b in args.batches.split(",")))
    report = Report(args.out, plan.budget_s)

    def stop(signum, frame):  # a `timeout` or a kill: keep what was measured
        report.line(f"stopped by signal {signum}")
        report.save()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    if plan.device == "cuda" and not torch.cuda.is_available():
        report.line("no CUDA device visible to torch: nothing to measure (use --cpu-smoke to "
                    "check the script on a CPU)")
        report.add("env", what="cuda", status="skipped", reason="torch.cuda.is_available() "
                                                                "is False")
        return 1
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
    sections = set(args.only.split(","))
    environment(report, plan)
    # the cheap and the most asked-for first; torch.compile (minutes) last
    runs = [("copy", lambda: bench_copies(report, plan)),
            ("preprocess", lambda: bench_preprocess(report, plan)),
            ("model", lambda: run_models(report, plan, compiled=False)),
            ("decode", lambda: bench_decode(report, plan)),
            ("compile", lambda: run_models(report, plan, compiled=True))]
    for name, fn in runs:
        if name not in sections:
            continue
        try:
            fn()
        except Exception as e:  # a section's own bug or a broken GPU: the others still run
            report.skip(name, "section", why(e))
    report.line(f"done in {time.monotonic() - report.start:.0f} s; results in {args.out}")
    report.save()
    return 0


_TSM: tuple | None = None


def run_models(report: Report, plan: Plan, compiled: bool) -> None:
    global _TSM
    if _TSM is None:
        try:
            _TSM = import_tsm(report)
        except Exception as e:
            report.skip("model", "import tsm_model", why(e))
            return
    bench_models(report, plan, *_TSM, compiled=compiled)


if __name__ == "__main__":
    sys.exit(main())
