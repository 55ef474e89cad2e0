"""`tsm data synth`: write the synthetic time-reversed-pairs corpus (see pipeline/synthetic.py)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Datasets: make the synthetic corpus.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


def fail(message: str) -> None:
    """Stop with a one-line message on stderr (exit 2): bad input is not a crash."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def parse_range(text: str, what: str) -> tuple[int, int]:
    """`"24-64"` -> (24, 64); a single number `"32"` -> (32, 32)."""
    lo, sep, hi = text.partition("-")
    try:
        pair = (int(lo), int(hi) if sep else int(lo))
    except ValueError:
        fail(f"{what} must be N or LO-HI, got {text!r}")
    if pair[0] > pair[1]:
        fail(f"{what}: {pair[0]} > {pair[1]}")
    return pair


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="output folder (videos/, train/val/test.csv)"),
    videos: int = typer.Option(1000, min=1, help="number of videos"),
    seed: int = typer.Option(0, help="corpus seed; same seed, same corpus"),
    size: int = typer.Option(128, min=16, help="frame width and height (even)"),
    frames: str = typer.Option("24-64", help="clip length range in frames, LO-HI"),
    fps: str = typer.Option("12-30", help="frame-rate range, LO-HI"),
    workers: int = typer.Option(2, min=1, help="render/encode processes"),
) -> None:
    """Make a labelled corpus of 10 motion classes in 5 time-reversed pairs."""
    from rich.progress import Progress

    from pipeline.synthetic import SynthConfig, generate

    lo_f, hi_f = parse_range(frames, "--frames")
    lo_r, hi_r = parse_range(fps, "--fps")
    if size % 2:
        fail("--size must be even (H.264 yuv420p)")
    cfg = SynthConfig(videos=videos, seed=seed, size=size, min_frames=lo_f, max_frames=hi_f,
                      min_fps=lo_r, max_fps=hi_r, workers=workers)
    try:
        with Progress() as progress:
            task = progress.add_task("rendering + encoding", total=videos)
            manifests = generate(out, cfg, progress=lambda n: progress.advance(task, n))
    except ValueError as e:
        fail(str(e))
    for split, path in manifests.items():
        typer.echo(f"{split}: {path}")
