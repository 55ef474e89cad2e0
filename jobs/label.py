"""`tsm label`: label every video of a directory, S3 prefix or manifest into Parquet.

The console shows a progress bar while the job runs and one summary screen at
the end. Everything else the job's libraries print on stderr (Ray's start-up
notes, MLflow's database set-up, native-code log lines) goes to a log file
named in the summary, so the console stays readable. Problems with flags,
inputs or the model end the command with one line and exit code 2.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import typer

from jobs.console import ProgressBar, log_file, stderr_to

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f}s"


def _summary(summary, log_path: Path) -> None:
    """The end-of-job screen: one line per fact, nothing truncated."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(soft_wrap=True)
    n_errors = sum(summary.errors.values())
    kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(summary.errors.items(), key=lambda x: -x[1]))
    parts = len(summary.parts)
    lines = [
        ("ok", f"[green]{summary.ok:,}[/]"),
        ("errors", f"[red]{n_errors:,}[/] ({escape(kinds)})" if n_errors else "0"),
        ("skipped", f"{summary.skipped:,} already labelled by this model version"),
    ]
    if summary.duplicates:
        lines.append(("duplicates", f"{summary.duplicates:,} repeated inputs dropped"))
    if summary.invalid_rows:
        lines.append(("bad rows", f"{summary.invalid_rows:,} manifest rows without a uri"))
    lines += [
        ("output", f"{escape(summary.output)} ({parts} new part file{'s' if parts != 1 else ''})"),
        ("model", f"{escape(summary.model_name)} version {escape(summary.model_version)}"),
        ("MLflow", f"run {summary.run_id} in {escape(summary.tracking_uri)}"),
        ("log", escape(str(log_path))),
    ]
    console.print(
        f"[bold]Labelled {summary.processed:,} of {summary.listed:,} videos in "
        f"{_duration(summary.wall_time_s)}[/] ({summary.videos_per_s:.2f} videos/s)"
    )
    for name, value in lines:
        console.print(f"  [bold]{name:<10}[/] {value}")


def label(
    input: str = typer.Argument(
        ...,
        help="Videos to label: a local directory, s3://bucket/prefix/, one video file, or a "
        "manifest (.parquet, .csv, .jsonl) with a 'uri' column (or S3 Inventory bucket/key).",
        show_default=False,
    ),
    output: str = typer.Option(
        ..., "--output", "-o", help="Where Parquet parts go: a local directory or s3://bucket/prefix/."
    ),
    model: str = typer.Option(
        ..., "--model", "-m",
        help="A saved model directory, or an MLflow model URI: models:/NAME@ALIAS or "
        "models:/NAME/VERSION.",
    ),
    segments: int | None = typer.Option(
        None, "--segments",
        help="Frames sampled per video (one per segment). [default: the model's]",
        show_default=False,
    ),
    top_k: int = typer.Option(5, "--top-k", help="Labels kept per video."),
    embeddings: bool = typer.Option(
        True, "--embeddings/--no-embeddings", help="Write the per-video embedding."
    ),
    embedding_dtype: str = typer.Option(
        "float32", "--embedding-dtype", help="Embedding precision: float32 or float16."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Clips per model forward pass."),
    actors: int = typer.Option(1, "--actors", help="Model actors (each loads the model once)."),
    gpus_per_actor: float = typer.Option(
        0.0, "--gpus-per-actor", help="GPUs per model actor (0: run the model on CPU)."
    ),
    cpus_per_actor: float | None = typer.Option(
        None, "--cpus-per-actor",
        help="CPUs Ray reserves per model actor. [default: 1 with GPUs, else 0: the model "
        "shares the cores with decoding]",
        show_default=False,
    ),
    decode_timeout: float = typer.Option(
        120.0, "--decode-timeout", help="Seconds allowed per video to fetch and decode."
    ),
    stall_timeout: float = typer.Option(
        1800.0, "--stall-timeout",
        help="End the job if no video finishes for this many seconds (parts are kept).",
    ),
    stream_threshold_mb: float = typer.Option(
        64.0, "--stream-threshold-mb",
        help="S3 objects larger than this are streamed by FFmpeg (ranged GETs), not read whole.",
    ),
    part_rows: int = typer.Option(
        50_000, "--part-rows", help="Rows per output Parquet file (files also roll at ~128 MB)."
    ),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast on GPU."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Label videos with a TSM model; write one Parquet row per video (resumable)."""
    from pipeline.label_job import LabelConfig, LabelError, run_label
    from pipeline.sink import SinkConfig

    if part_rows < 1:
        raise _fail(f"part rows must be >= 1, got {part_rows}", EXIT_BAD_INPUT)
    config = LabelConfig(
        input=input,
        output=output,
        model=model,
        segments=segments,
        top_k=top_k,
        embeddings=embeddings,
        embedding_dtype=embedding_dtype,
        batch_size=batch_size,
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        cpus_per_actor=cpus_per_actor,
        decode_timeout_s=decode_timeout,
        stall_timeout_s=stall_timeout,
        stream_threshold_mb=stream_threshold_mb,
        bf16=bf16,
        sink=SinkConfig(max_rows=part_rows),
    )
    try:
        config.validate()  # flags first: answered before anything starts
    except LabelError as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from None

    log_path = log_file("label")
    bar = ProgressBar(enabled=progress)
    try:
        with stderr_to(log_path), bar:
            summary = run_label(config, on_start=bar.start, on_progress=bar.update)
    except LabelError as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        raise _fail(
            "interrupted; finished parts are kept, rerun the same command to resume",
            EXIT_INTERRUPTED,
        ) from None
    except Exception as e:
        with open(log_path, "a") as log:
            traceback.print_exc(file=log)
        raise _fail(f"{type(e).__name__}: {' '.join(str(e).split())[:300]} (details: {log_path})",
                    EXIT_FAILED) from None
    _summary(summary, log_path)
