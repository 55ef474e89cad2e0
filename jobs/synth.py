"""`tsm data synth`: write the synthetic time-reversed-pairs corpus (see training/synthetic.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from jobs.console import TsmCommand, fail, out, progress_display, terminal_stderr
from training.synthetic import SynthConfig as S

app = typer.Typer(help="Datasets: make the synthetic corpus.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


def parse_range(text: str, what: str) -> tuple[int, int]:
    """`"24-64"` -> (24, 64); a single number `"32"` -> (32, 32)."""
    lo, sep, hi = text.partition("-")
    try:
        return int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise fail(f"{what} must be N or LO-HI, got {text!r}") from None


@app.command("synth", cls=TsmCommand)
def synth(
    out_dir: Path = typer.Argument(..., metavar="OUT",
                                   help="output folder (videos/, train/val/test.csv)"),
    videos: int = typer.Option(S.videos, help="number of videos"),
    seed: int = typer.Option(S.seed, help="corpus seed; same seed, same corpus"),
    size: int = typer.Option(S.size, help="frame width and height (even)"),
    frames: str = typer.Option(f"{S.min_frames}-{S.max_frames}",
                               help="clip length range in frames, LO-HI"),
    fps: str = typer.Option(f"{S.min_fps}-{S.max_fps}", help="frame-rate range, LO-HI"),
    workers: int = typer.Option(S.workers, help="render/encode processes"),
    force: bool = typer.Option(False, "--force",
                               help="replace another corpus already in OUT (its videos and "
                               "manifests)"),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Show the progress on stderr."),
) -> None:
    """Make a labelled corpus of 10 motion classes in 5 time-reversed pairs."""
    from pipeline.errors import LabelError
    from training.synthetic import corpus_files, generate, record_of, recorded

    lo_f, hi_f = parse_range(frames, "--frames")
    lo_r, hi_r = parse_range(fps, "--fps")
    try:
        cfg = S(videos=videos, seed=seed, size=size, min_frames=lo_f, max_frames=hi_f,
                min_fps=lo_r, max_fps=hi_r, workers=workers)
    except LabelError as e:
        raise fail(str(e)) from None
    if out_dir.exists() and not out_dir.is_dir():
        raise fail(f"{out_dir} is not a folder")
    existing = corpus_files(out_dir)
    # the same command again (say, after an interrupted run) completes the same corpus;
    # anything else would replace videos or manifests
    if existing and not force and recorded(out_dir) != record_of(cfg):
        shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise fail(f"{out_dir} already holds another corpus ({shown}); pass --force to "
                   "replace it or choose another folder")
    with terminal_stderr() as stream, progress_display(stream, disable=not progress) as bar:
        task = bar.add_task("rendering + encoding", total=videos)
        manifests = generate(out_dir, cfg, progress=lambda n: bar.advance(task, n))
    for split, path in manifests.items():
        out(f"{split}: {path}")
