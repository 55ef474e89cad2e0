"""`tsm label`: label every video of a directory, S3 prefix or manifest into Parquet.

The console shows a progress bar while the job runs and one summary screen at
the end. Everything else the job's libraries print on stderr (Ray's start-up
notes, MLflow's database set-up, native-code log lines) goes to a log file
named in the summary, so the console stays readable. Problems with flags,
inputs or the model end the command with one line and exit code 2.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import typer

from jobs.console import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    ProgressBar,
    fail,
    log_file,
    out,
    results_console,
    to_log,
)
from pipeline.settings import LabelConfig as C
from pipeline.sink import SinkConfig


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f}s"


def _summary(summary, log_path: Path) -> None:
    """The end-of-job screen: one line per fact, nothing truncated."""
    from rich.markup import escape

    console = results_console(soft_wrap=True)
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
    if set(summary.decoders) - {"cpu"}:  # say it when anything but the CPU decoder was used
        used = ", ".join(f"{k} {n:,}" for k, n in sorted(summary.decoders.items()))
        lines.append(("decoded", escape(used)))
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
    num_segments: int | None = typer.Option(
        C.num_segments, "--num-segments", "--segments",
        help="Frames sampled per video (one per segment).",
        show_default="the model's",
    ),
    top_k: int = typer.Option(C.top_k, "--top-k", help="Labels kept per video."),
    embeddings: bool = typer.Option(
        C.embeddings, "--embeddings/--no-embeddings", help="Write the per-video embedding."
    ),
    embedding_dtype: str = typer.Option(
        C.embedding_dtype, "--embedding-dtype", help="Embedding precision: float32 or float16."
    ),
    batch_size: int | None = typer.Option(
        C.batch_size, "--batch-size", help="Clips per model actor call.",
        show_default="32 with GPUs, 8 on CPU"),
    actors: int | None = typer.Option(
        C.actors, "--actors",
        help="Model actors (each loads the model once).",
        show_default="from what the model and decoding cost, measured at start-up"),
    gpus_per_actor: float = typer.Option(
        C.gpus_per_actor, "--gpus-per-actor", help="GPUs per model actor (0: run the model on CPU)."
    ),
    cpus_per_actor: float | None = typer.Option(
        C.cpus_per_actor, "--cpus-per-actor",
        help="CPUs Ray reserves per model actor.",
        show_default="measured at start-up; 1 with GPUs",
    ),
    torch_threads: int | None = typer.Option(
        C.torch_threads, "--torch-threads",
        help="Intra-op threads per model actor on CPU.",
        show_default="measured at start-up",
    ),
    decode_timeout: float = typer.Option(
        C.decode_timeout_s, "--decode-timeout",
        help="Seconds allowed per video to fetch and decode.",
    ),
    stall_timeout: float = typer.Option(
        C.stall_timeout_s, "--stall-timeout",
        help="End the job if no video finishes for this many seconds (parts are kept).",
    ),
    sampling: str = typer.Option(
        C.sampling, "--sampling",
        help="Which frame of each segment: uniform (its centre, exact) or keyframe (the "
        "cheapest to decode: far less decoding and reading).",
    ),
    decoder: str = typer.Option(
        C.decoder, "--decoder",
        help="cpu: decode every video in the CPU decode tasks; dali: the model actors decode "
        "what NVIDIA DALI can (NVDEC on their GPUs; DALI's CPU backend without GPUs), the CPU "
        "tasks the rest; auto: dali where DALI imports and the actors have GPUs, else cpu.",
    ),
    whole_read_mb: float = typer.Option(
        C.whole_read_mb, "--whole-read-mb",
        help="S3 objects up to this size are read with one GET; larger ones with ranged GETs "
        "of only what is decoded.",
    ),
    max_frame_pixels: int = typer.Option(
        C.max_frame_pixels, "--max-frame-pixels",
        help="Refuse videos whose frames are larger (error kind too_large); decode tasks "
        "reserve memory for this size.",
    ),
    keep_columns: str = typer.Option(
        ",".join(C.keep_columns), "--keep-columns",
        help="Manifest columns to carry into every row (comma-separated, e.g. video_id).",
        show_default="none",
    ),
    limit: int | None = typer.Option(
        C.limit, "--limit", help="Label at most N videos (of those not done yet).",
        show_default="no limit"),
    max_error_rate: float | None = typer.Option(
        C.max_error_rate, "--max-error-rate",
        help="Fail the run (exit 1, rows kept, no run record) if more than this share of "
        "its videos get error rows, e.g. 0.05.", show_default="none: never fail"),
    part_rows: int = typer.Option(
        SinkConfig.max_rows, "--part-rows",
        help="Rows per output Parquet file (files also roll at ~64 MB).",
    ),
    bf16: bool = typer.Option(C.bf16, "--bf16", help="bfloat16 autocast on GPU."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show the plan (model, inputs, what is already done) and stop."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Show the progress on stderr."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the run's summary as one JSON object (nothing else) on "
        "stdout; with --dry-run, the plan."),
) -> None:
    """Label videos with a TSM model; write one Parquet row per video (resumable)."""
    from pipeline.errors import LabelError, one_line

    try:  # flags first: answered before anything starts
        config = C(
            input=input, output=output, model=model, num_segments=num_segments, top_k=top_k,
            embeddings=embeddings, embedding_dtype=embedding_dtype, batch_size=batch_size,
            actors=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor,
            torch_threads=torch_threads,
            decode_timeout_s=decode_timeout, stall_timeout_s=stall_timeout,
            sampling=sampling, decoder=decoder, whole_read_mb=whole_read_mb,
            max_frame_pixels=max_frame_pixels, bf16=bf16,
            keep_columns=tuple(c.strip() for c in keep_columns.split(",") if c.strip()),
            limit=limit, max_error_rate=max_error_rate, sink=SinkConfig(max_rows=part_rows),
        )
    except LabelError as e:
        raise fail(str(e), EXIT_BAD_INPUT) from None

    from pipeline.ray_session import while_ray_starts

    def make_plan():  # torch, torchvision, Ray Data and the model: seconds of one thread
        from pipeline.plan import plan_label

        return plan_label(config)

    log_path = log_file("label")
    bar = ProgressBar(enabled=progress and not dry_run)
    try:
        with to_log(log_path):
            # Ray starts beside the plan (not for a dry run); the run stops it
            plan, ray_started = (make_plan(), False) if dry_run else while_ray_starts(make_plan)
        if dry_run:
            out(json.dumps(plan.describe(), indent=None if as_json else 1))
            return
        from pipeline.job import run_plan

        with to_log(log_path), bar:
            summary = run_plan(plan, ray_started=ray_started, on_start=bar.start,
                               on_progress=bar.update)
    except LabelError as e:
        raise fail(str(e), EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        raise fail(
            "interrupted; finished parts are kept, rerun the same command to resume",
            EXIT_INTERRUPTED,
        ) from None
    except Exception as e:
        with open(log_path, "a") as log:
            traceback.print_exc(file=log)
        raise fail(f"{one_line(e, with_type=True)} (details: {log_path})", EXIT_FAILED) from None
    if as_json:
        out(json.dumps(summary_json(summary, log_path)))
    else:
        _summary(summary, log_path)


def summary_json(summary, log_path: Path) -> dict:
    """The summary as `tsm label --json` prints it: every field, the derived counts, the log."""
    import dataclasses

    return {**dataclasses.asdict(summary), "processed": summary.processed,
            "videos_per_s": round(summary.videos_per_s, 4), "log": str(log_path)}
