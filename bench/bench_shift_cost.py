"""What does the temporal shift cost? TSM vs TSN latency, and the shift op alone.

TSM and TSN (the same network with shift off) are timed in one process with
interleaved repetitions (TSM, TSN, TSN, TSM, ...), so load from other jobs on the
machine hits both alike; the figure to read is the median of the per-repetition
TSM/TSN ratios. Each call records wall time and this process's CPU time; with
``--threads 1`` CPU time barely depends on how busy the other cores are, so its
ratio is the steadier one on a shared machine. CPU, eval mode,
``torch.inference_mode``, 8 frames of 224x224.

    .venv/bin/python -m bench.bench_shift_cost            # full run, a few minutes
    .venv/bin/python -m bench.bench_shift_cost --reps 3 --archs mobilenetv2 --batches 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tsm_model import TSMConfig, build, temporal_shift

# the reference implementation's op, as the tests re-implement it
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reference_tsm import reference_shift


def cat_shift(x: torch.Tensor, n_segment: int, fold_div: int = 8) -> torch.Tensor:
    """mmaction2-style: slice, pad each shifted part with a zero frame, concatenate."""
    nt, c, h, w = x.shape
    v = x.view(nt // n_segment, n_segment, c, h, w)
    fold = c // fold_div
    blank = torch.zeros_like(v[:, :1, :fold])
    left = torch.cat((v[:, 1:, :fold], blank), 1)
    mid = torch.cat((blank, v[:, :-1, fold : 2 * fold]), 1)
    return torch.cat((left, mid, v[:, :, 2 * fold :]), 2).view(nt, c, h, w)


def _seconds(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, process CPU) seconds for one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int
) -> dict[str, list[tuple[float, float]]]:
    """Time each function ``reps`` times, alternating the order every repetition."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            times[name].append(_seconds(fns[name]))
    return times


def _paired(a: list[tuple[float, float]], b: list[tuple[float, float]], i: int) -> str:
    """Median of per-repetition ratios a/b of measure ``i``, with their range."""
    ratios = [x[i] / y[i] for x, y in zip(a, b, strict=True)]
    return f"{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})"


def _median_ms(samples: list[tuple[float, float]], i: int) -> float:
    return statistics.median(s[i] for s in samples) * 1e3


def bench_models(archs: list[str], batches: list[int], reps: int, warmup: int) -> list[str]:
    rows = [
        "| model | clips x 8 frames | TSN wall ms | TSM wall ms | TSM/TSN wall, paired "
        "median (range) | TSN CPU ms | TSM CPU ms | TSM/TSN CPU, paired median (range) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch in archs:
        tsm = build(TSMConfig(arch=arch, num_classes=400, num_segments=8)).eval()
        tsn = build(TSMConfig(arch=arch, num_classes=400, num_segments=8, shift=False)).eval()
        for batch in batches:
            clip = torch.randn(batch, 8, 3, 224, 224)
            times = interleaved(
                {"tsm": lambda m=tsm, c=clip: m(c), "tsn": lambda m=tsn, c=clip: m(c)},
                reps,
                warmup,
            )
            tsm_t, tsn_t = times["tsm"], times["tsn"]
            rows.append(
                f"| {arch} | {batch} | {_median_ms(tsn_t, 0):.1f} | {_median_ms(tsm_t, 0):.1f} | "
                f"{_paired(tsm_t, tsn_t, 0)} | {_median_ms(tsn_t, 1):.1f} | "
                f"{_median_ms(tsm_t, 1):.1f} | {_paired(tsm_t, tsn_t, 1)} |"
            )
            print(rows[-1], flush=True)
    return rows


def bench_shift_ops(reps: int, warmup: int) -> list[str]:
    rows = [
        "| activation (N*T, C, H, W) | reference zeros+3 copies ms | zeros+cat ms | "
        "ours (empty+slices) ms | ours/reference, paired median (range) |",
        "|---|---|---|---|---|",
    ]
    # ResNet-50 stage-1 and stage-3 block inputs, 8 frames, batch 1 and 8.
    for shape in ((8, 256, 56, 56), (64, 256, 56, 56), (8, 1024, 14, 14), (64, 1024, 14, 14)):
        x = torch.randn(shape)
        assert torch.equal(temporal_shift(x, 8), reference_shift(x, 8))
        assert torch.equal(cat_shift(x, 8), reference_shift(x, 8))
        times = interleaved(
            {
                "ref": lambda x=x: reference_shift(x, 8),
                "cat": lambda x=x: cat_shift(x, 8),
                "ours": lambda x=x: temporal_shift(x, 8),
            },
            reps * 4,
            warmup,
        )
        med = {k: _median_ms(v, 0) for k, v in times.items()}
        rows.append(
            f"| {shape} | {med['ref']:.2f} | {med['cat']:.2f} | {med['ours']:.2f} | "
            f"{_paired(times['ours'], times['ref'], 0)} |"
        )
        print(rows[-1], flush=True)
    return rows


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet50", "mobilenetv2"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"machine: {machine()}\n", flush=True)
    with torch.inference_mode():
        model_rows = bench_models(args.archs, args.batches, args.reps, args.warmup)
        print(flush=True)
        op_rows = bench_shift_ops(args.reps, args.warmup)
    print("\n" + "\n".join(model_rows) + "\n\n" + "\n".join(op_rows))


if __name__ == "__main__":
    main()
