"""`tsm evaluate`: offline accuracy of a model version on a labelled manifest, into MLflow."""

from __future__ import annotations

import json

import typer

from jobs.console import EXIT_BAD_INPUT, ProgressBar, fail, log_file, out, to_log
from pipeline.settings import LabelConfig as C


def command(
    model: str = typer.Option(..., "--model", "-m",
                              help="models:/NAME@ALIAS, models:/NAME/VERSION or a folder"),
    manifest: str = typer.Option(..., help="labelled manifest (uri, label columns)"),
    output: str | None = typer.Option(None, help="Parquet output of the label run",
                                      show_default="runs/evaluate/NAME-VERSION"),
    sampling: str = typer.Option(
        C.sampling, "--sampling",
        help="Which frame of each segment the label job takes: uniform (its centre, exact) or "
        "keyframe (the cheapest to decode), as `tsm label --sampling`.",
    ),
    batch_size: int = typer.Option(16, help="clips per model forward"),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Show the progress on stderr."),
    as_json: bool = typer.Option(False, "--json",
                                 help="Print the result as one JSON object on stdout."),
) -> None:
    """Measure top-1/top-5/per-class accuracy of a model on a labelled manifest."""
    import dataclasses

    from pipeline.errors import LabelError
    from registry.versions import ModelNotFoundError
    from training.evaluation import EXPERIMENT, evaluate

    # Ray's and MLflow's own notes go to a log file; stderr keeps the progress display
    log_path = log_file("evaluate")
    bar = ProgressBar(enabled=progress)
    try:
        with to_log(log_path), bar:
            r = evaluate(model, manifest, output, sampling=sampling, batch_size=batch_size,
                         on_start=bar.start, on_progress=bar.update)
    except (ValueError, FileNotFoundError, ModelNotFoundError, LabelError) as e:
        raise fail(str(e), EXIT_BAD_INPUT) from None
    if as_json:
        out(json.dumps({**dataclasses.asdict(r), "experiment": EXPERIMENT,
                        "log": str(log_path)}))
        return
    n_err = sum(r.errors.values())
    out(f"{r.model_name} version {r.model_version} on {r.num_videos} videos: "
        f"top-1 {r.top1:.4f}  top-5 {r.top5:.4f}  errors {n_err}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(r.errors.items()))})"
           if n_err else ""))
    for cls, acc in r.per_class.items():
        out(f"  {cls:<24} {acc:.3f}")
    out(f"dataset {r.dataset_name} (digest {r.dataset_digest}); {r.sampling} sampling; "
        f"MLflow run {r.run_id} "
        f"(experiment {EXPERIMENT}); labels in {r.output}; log {log_path}")
