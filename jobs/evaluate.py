"""`tsm evaluate`: offline accuracy of a model version on a labelled manifest, into MLflow."""

from __future__ import annotations

import typer

from jobs.console import ProgressBar, fail, log_file, stderr_to


def command(
    model: str = typer.Option(..., help="models:/NAME@ALIAS, models:/NAME/VERSION or a folder"),
    manifest: str = typer.Option(..., help="labelled manifest (uri, label columns)"),
    output: str | None = typer.Option(None, help="Parquet output of the label run "
                                      "(default runs/evaluate/NAME-VERSION)"),
    batch_size: int = typer.Option(16, help="clips per model forward"),
) -> None:
    """Measure top-1/top-5/per-class accuracy of a model on a labelled manifest."""
    from pipeline.errors import LabelError
    from registry.versions import ModelNotFoundError
    from training.evaluation import EXPERIMENT, evaluate

    # Ray's and MLflow's own notes go to a log file; the console keeps the progress bar
    log_path = log_file("evaluate")
    bar = ProgressBar(enabled=True)
    try:
        with stderr_to(log_path), bar:
            r = evaluate(model, manifest, output, batch_size=batch_size,
                         on_start=bar.start, on_progress=bar.update)
    except (ValueError, FileNotFoundError, ModelNotFoundError, LabelError) as e:
        raise fail(str(e)) from None
    n_err = sum(r.errors.values())
    typer.echo(f"{r.model_name} version {r.model_version} on {r.num_videos} videos: "
               f"top-1 {r.top1:.4f}  top-5 {r.top5:.4f}  errors {n_err}"
               + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(r.errors.items()))})"
                  if n_err else ""))
    for cls, acc in r.per_class.items():
        typer.echo(f"  {cls:<24} {acc:.3f}")
    typer.echo(f"dataset {r.dataset_name} (digest {r.dataset_digest}); MLflow run {r.run_id} "
               f"(experiment {EXPERIMENT}); labels in {r.output}")
