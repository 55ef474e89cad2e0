"""`tsm demo`: the whole system end to end on embedded defaults, in a few minutes.

1. makes a small synthetic corpus (fixed seed) under the work folder;
2. registers the bundled model in the local MLflow store (once: a version with
   the same weights is reused) and points `@champion` at it if nothing holds it;
3. runs the real label job (local Ray, Parquet output) on the corpus;
4. prints a few labelled rows and the accuracy against the known labels.
"""

from __future__ import annotations

from pathlib import Path

import typer

from jobs.console import (
    EXIT_FAILED,
    ProgressBar,
    fail,
    log_file,
    note,
    progress_display,
    results_console,
    terminal_stderr,
    to_log,
)

MODEL_NAME = "tsm-synthetic"
ALIAS = "champion"
DEMO_SEED = 7
MAX_VIDEOS = 5000


def _corpus(root: Path, videos: int) -> Path:
    """The demo corpus, with one manifest of all its videos and their labels."""
    from training.synthetic import SynthConfig, combine_manifests, generate

    with terminal_stderr() as stream, progress_display(stream, transient=True) as progress:
        task = progress.add_task("making synthetic videos", total=videos)
        manifests = generate(root, SynthConfig(videos=videos, seed=DEMO_SEED),
                             progress=lambda n: progress.advance(task, n))
    return combine_manifests(manifests, root / "labels.csv")


def _show(labelled, preds, console) -> None:
    """One labelled video per class: true label, prediction, score."""
    from rich.table import Table

    table = Table("video", "true label", "predicted", "score", title="one labelled video per class")
    examples: dict[str, str] = {}
    for uri, label in labelled:
        examples.setdefault(label, uri)
    for label, uri in examples.items():
        row = preds.get(uri)
        if row is None or row["status"] != "ok":
            table.add_row(Path(uri).name, label, "[red]error[/]", "")
            continue
        mark = "" if row["top_k_labels"][0] == label else " [red]x[/]"
        table.add_row(Path(uri).name, label, row["top_k_labels"][0] + mark,
                      f"{row['top_k_scores'][0]:.3f}")
    console.print(table)


def command(
    workdir: Path = typer.Option(Path(".demo"), help="where the corpus and Parquet output go"),
    videos: int = typer.Option(40, help=f"synthetic videos to make and label (1-{MAX_VIDEOS})"),
) -> None:
    """Make videos, register the bundled model, label them with Ray, show the results."""
    import time

    import tsm_model
    from pipeline.errors import LabelError
    from pipeline.job import run_label
    from pipeline.settings import LabelConfig
    from registry import versions
    from registry.tracking import tracking_uri
    from training.clip_dataset import read_labelled_manifest
    from training.evaluation import read_predictions, score

    if not 1 <= videos <= MAX_VIDEOS:
        raise fail(f"videos must be in [1, {MAX_VIDEOS}], got {videos}")
    if not (tsm_model.BUNDLED / "model.safetensors").is_file():
        raise fail(f"the bundled model is missing from {tsm_model.BUNDLED}", EXIT_FAILED)
    console = results_console(soft_wrap=True)
    started = time.monotonic()
    workdir = workdir.resolve()
    note(f"1/3 {videos} synthetic videos (seed {DEMO_SEED}) in {workdir}")
    manifest = _corpus(workdir / "corpus", videos)

    log_path = log_file("demo")
    # MLflow's and Ray's start-up chatter goes to a log file, the console keeps the story
    with to_log(log_path):
        version, created = versions.register_if_new(tsm_model.BUNDLED, MODEL_NAME,
                                                    tags={"source": "bundled"})
        if versions.alias_version(MODEL_NAME, ALIAS) is None:
            versions.set_alias(MODEL_NAME, ALIAS, version)
    model_uri = f"models:/{MODEL_NAME}@{ALIAS}"
    note(f"2/3 bundled model {'registered as' if created else 'already is'} {MODEL_NAME} "
         f"version {version} in {tracking_uri()}; labelling with {model_uri}")

    output = workdir / "labels"
    note(f"3/3 label job (local Ray) -> {output}")
    bar = ProgressBar(enabled=True)
    try:
        with to_log(log_path), bar:
            summary = run_label(LabelConfig(input=str(manifest), output=str(output),
                                            model=model_uri),
                                on_start=bar.start, on_progress=bar.update)
    except LabelError as e:
        raise fail(str(e)) from None

    labelled = read_labelled_manifest(manifest)
    preds = read_predictions(str(output), summary.model_name, summary.model_version)
    classes = list(tsm_model.load_config(tsm_model.BUNDLED).class_names)
    top1, top5, _, errors, _, _ = score(labelled, preds, classes)
    _show(labelled, preds, console)
    console.print(f"accuracy on {len(labelled)} videos: top-1 {top1:.3f}, top-5 {top5:.3f}; "
                  f"error rows {sum(errors.values())}; model {summary.model_name} "
                  f"version {summary.model_version}; Parquet in {output} "
                  f"({time.monotonic() - started:.0f} s; logs in {log_path})")
