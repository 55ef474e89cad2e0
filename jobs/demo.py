"""`tsm demo`: the whole system end to end on embedded defaults, in a few minutes.

1. makes a small synthetic corpus (fixed seed) under the work folder;
2. registers the bundled model in the local MLflow store (once: a version with
   the same weights is reused) and points `@champion` at it if nothing holds it;
3. runs the real label job (local Ray, Parquet output) on the corpus;
4. prints a few labelled rows and the accuracy against the known labels.
"""

from __future__ import annotations

import csv
from pathlib import Path

import typer

BUNDLED_MODEL = Path(__file__).parent / "bundled_model"
MODEL_NAME = "tsm-synthetic"
ALIAS = "champion"
DEMO_SEED = 7


def ensure_registered(model_dir: Path = BUNDLED_MODEL, name: str = MODEL_NAME,
                      alias: str = ALIAS) -> tuple[str, bool]:
    """(version with the bundled weights, newly registered?); sets `alias` if nothing holds it."""
    from pipeline import registry

    digest = registry.weights_digest(model_dir)
    version = registry.find_version_by_digest(name, digest)
    created = version is None
    if version is None:
        version = registry.register_model(model_dir, name, tags={"source": "bundled"})
    if registry.alias_version(name, alias) is None:
        registry.set_alias(name, alias, version)
    return version, created


def make_corpus(root: Path, videos: int, seed: int = DEMO_SEED) -> Path:
    """The demo corpus and one manifest of all its videos (`labels.csv`)."""
    from rich.progress import Progress

    from pipeline.synthetic import SynthConfig, generate

    cfg = SynthConfig(videos=videos, seed=seed)
    with Progress(transient=True) as progress:
        task = progress.add_task("making synthetic videos", total=videos)
        manifests = generate(root, cfg, progress=lambda n: progress.advance(task, n))
    rows: list[list[str]] = []
    for path in manifests.values():
        with open(path, newline="") as f:
            rows.extend(r for r in csv.reader(f) if r != ["uri", "label"])
    out = root / "labels.csv"
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows([["uri", "label"], *sorted(rows)])
    return out


def command(
    workdir: Path = typer.Option(Path(".demo"), help="where the corpus and Parquet output go"),
    videos: int = typer.Option(40, min=1, max=5000, help="synthetic videos to make and label"),
) -> None:
    """Make videos, register the bundled model, label them with Ray, show the results."""
    import time

    from rich.console import Console
    from rich.table import Table

    import tsm_model
    from jobs.console import ProgressBar, log_file, stderr_to
    from jobs.evaluate import read_predictions, score
    from pipeline.clip_dataset import read_labelled_manifest
    from pipeline.label_job import LabelConfig, LabelError, run_label
    from pipeline.tracking import configure_mlflow

    console = Console()
    started = time.monotonic()
    if not (BUNDLED_MODEL / "model.safetensors").is_file():
        typer.echo(f"error: the bundled model is missing from {BUNDLED_MODEL}", err=True)
        raise typer.Exit(1)
    workdir = workdir.resolve()
    console.print(f"[bold]1/3[/] {videos} synthetic videos (seed {DEMO_SEED}) in {workdir}")
    manifest = make_corpus(workdir / "corpus", videos)

    log_path = log_file("demo")
    # MLflow's and Ray's start-up chatter goes to a log file, the console keeps the story
    with stderr_to(log_path):
        uri = configure_mlflow()
        version, created = ensure_registered()
    model_uri = f"models:/{MODEL_NAME}@{ALIAS}"
    console.print(f"[bold]2/3[/] bundled model {'registered as' if created else 'already is'} "
                  f"{MODEL_NAME} version {version} in {uri}; labelling with {model_uri}")

    output = workdir / "labels"
    console.print(f"[bold]3/3[/] label job (local Ray) -> {output}")
    bar = ProgressBar(enabled=True)
    try:
        with stderr_to(log_path), bar:
            summary = run_label(LabelConfig(input=str(manifest), output=str(output),
                                            model=model_uri, top_k=5),
                                on_start=bar.start, on_progress=bar.update)
    except LabelError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None

    labelled = read_labelled_manifest(manifest)
    preds = read_predictions(str(output), summary.model_name, summary.model_version)
    classes = list(tsm_model.load_config(BUNDLED_MODEL).class_names)
    top1, top5, _, errors, _, _ = score(labelled, preds, classes)

    table = Table("video", "true label", "predicted", "score", title="one labelled video per class")
    examples: dict[str, str] = {}  # one video per class
    for uri_, label in labelled:
        examples.setdefault(label, uri_)
    for label, uri_ in examples.items():
        row = preds.get(uri_)
        if row is None or row["status"] != "ok":
            table.add_row(Path(uri_).name, label, "[red]error[/]", "")
            continue
        mark = "" if row["top_k_labels"][0] == label else " [red]x[/]"
        table.add_row(Path(uri_).name, label, row["top_k_labels"][0] + mark,
                      f"{row['top_k_scores'][0]:.3f}")
    console.print(table)
    console.print(f"accuracy on {len(labelled)} videos: top-1 {top1:.3f}, top-5 {top5:.3f}; "
                  f"error rows {sum(errors.values())}; model {summary.model_name} "
                  f"version {summary.model_version}; Parquet in {output} "
                  f"({time.monotonic() - started:.0f} s; logs in {log_path})")
