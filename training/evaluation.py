"""Offline accuracy of a model version on a labelled manifest, recorded in MLflow.

Runs the real label job (`pipeline.job.run_label`) on the manifest, so
the number measured is the number production gets, then joins its Parquet
predictions with the manifest's labels. Error rows (and any video missing from
the output) count as wrong and are reported. Each evaluation is its own MLflow
run, tagged with the model name and version: the manifest is its dataset input
(name, digest, size), top-1, top-5 and per-class accuracy are its metrics and,
for a registered version, the metrics of that version's MLflow model, tied to
the dataset (`registry.evaluations`), so `tsm models promote` compares
versions on the same data only. A confusion-matrix picture and the report go
with the run.

The label job samples frames as `sampling` says (`uniform`, the default: each
segment's centre; `keyframe`: each segment's cheapest frame, see
`pipeline.sampling`); it is a param of the evaluation run, and only rows
labelled with that sampling and the model's number of segments are scored, so
an output that holds both samplings scores the one asked for.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.settings import LabelConfig

EXPERIMENT = "tsm-evaluate"
ERROR_COLUMN = "(error)"  # confusion-matrix column for videos with no prediction


@dataclass
class EvalResult:
    """What an evaluation measured."""

    model_name: str
    model_version: str
    num_videos: int
    top1: float
    top5: float
    per_class: dict[str, float]
    errors: dict[str, int]  # error_kind -> count (missing rows as "missing")
    confusion: list[list[int]]  # [true class][predicted class, then the error column]
    classes: list[str]
    run_id: str
    output: str
    error_uris: list[str] = field(default_factory=list)
    dataset_name: str = ""  # the manifest as an MLflow dataset (registry.evaluations)
    dataset_digest: str = ""
    sampling: str = LabelConfig.sampling  # how the label job picked each segment's frame


def read_predictions(output: str, model_name: str, model_version: str, *,
                     sampling: str | None = None,
                     num_segments: int | None = None) -> dict[str, dict]:
    """uri -> latest output row of this model version (status, top-k labels/scores, error),
    among the rows labelled with `sampling` and `num_segments` (any, when None)."""
    import pyarrow.parquet as pq

    from pipeline.table import OutputTable

    cols = ["video_uri", "status", "error_kind", "model_name", "model_version", "top_k_labels",
            "top_k_scores", "processed_at", "sampling", "num_segments"]
    rows: dict[str, dict] = {}
    out = OutputTable(output, model_name, model_version)
    for part in out.parts():
        with out.store.open_input(part.uri, size=part.size) as f:
            rows_of_part = pq.read_table(f, columns=cols).to_pylist()
        for row in rows_of_part:
            if (row["model_name"], row["model_version"]) != (model_name, model_version):
                continue
            if sampling is not None and row["sampling"] != sampling:
                continue
            if num_segments is not None and row["num_segments"] != num_segments:
                continue
            seen = rows.get(row["video_uri"])
            if seen is None or row["processed_at"] > seen["processed_at"]:
                rows[row["video_uri"]] = row
    return rows


def score(
    labelled: list[tuple[str, str]], predictions: dict[str, dict], classes: list[str]
) -> tuple[float, float, dict[str, float], dict[str, int], list[list[int]], list[str]]:
    """(top1, top5, per-class top-1, error counts, confusion, error uris) over the labelled rows.

    A video without an ok prediction is wrong for top-1 and top-5 alike.
    """
    index = {c: i for i, c in enumerate(classes)}
    confusion = [[0] * (len(classes) + 1) for _ in classes]
    hits1 = hits5 = 0
    errors: dict[str, int] = {}
    error_uris: list[str] = []
    per_true = [0] * len(classes)
    per_hit = [0] * len(classes)
    for uri, label in labelled:
        t = index[label]
        per_true[t] += 1
        row = predictions.get(uri)
        if row is None or row["status"] != "ok" or not row["top_k_labels"]:
            kind = "missing" if row is None else (row["error_kind"] or "no_prediction")
            errors[kind] = errors.get(kind, 0) + 1
            error_uris.append(uri)
            confusion[t][len(classes)] += 1
            continue
        top = list(row["top_k_labels"])
        pred = index.get(top[0])
        confusion[t][pred if pred is not None else len(classes)] += 1
        if top[0] == label:
            hits1 += 1
            per_hit[t] += 1
        if label in top[:5]:
            hits5 += 1
    n = max(len(labelled), 1)
    per_class = {c: per_hit[i] / per_true[i] for i, c in enumerate(classes) if per_true[i]}
    return hits1 / n, hits5 / n, per_class, errors, confusion, error_uris


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (plus an error column) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.array(confusion, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    cols = [*classes, ERROR_COLUMN]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(cols), 1.0 + 0.55 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate(model: str, manifest: str, output: str | None = None, *,
             sampling: str = LabelConfig.sampling, batch_size: int = 16, on_start=None,
             on_progress=None) -> EvalResult:
    """Label the manifest with `model`, score it against the labels, log it all to MLflow.

    `sampling` is the label job's (`LabelConfig.sampling`). `on_start` /
    `on_progress` follow the label job (see `pipeline.job.run_plan`).
    """
    import tsm_model
    from pipeline.job import run_label
    from registry import versions
    from training.clip_dataset import read_labelled_manifest

    labelled = read_labelled_manifest(manifest)
    if not labelled:
        raise ValueError(f"{manifest}: no rows")
    ref = versions.resolve_model(model)
    model_config = tsm_model.load_config(ref.path)
    classes = list(model_config.class_names)
    unknown = sorted({lab for _, lab in labelled} - set(classes))
    if unknown:
        raise ValueError(f"labels the model does not know: {', '.join(unknown)}")
    out = output or default_output(ref)
    config = LabelConfig(input=str(manifest), output=out, model=model, embeddings=False,
                         top_k=min(5, len(classes)), batch_size=batch_size, sampling=sampling)
    summary = run_label(config, on_start=on_start, on_progress=on_progress)
    predictions = read_predictions(out, ref.name, ref.version, sampling=sampling,
                                   num_segments=model_config.num_segments)
    top1, top5, per_class, errors, confusion, error_uris = score(labelled, predictions, classes)
    result = EvalResult(ref.name, ref.version, len(labelled), top1, top5, per_class, errors,
                        confusion, classes, "", out, error_uris, sampling=sampling)
    run_id, dataset = _log_evaluation(result, ref, model, manifest, labelled, summary.run_id)
    return dataclasses.replace(result, run_id=run_id, dataset_name=dataset.name,
                               dataset_digest=dataset.digest)


def default_output(ref) -> str:
    """Where an evaluation's label run writes when no output is given."""
    return str(Path("runs") / "evaluate" / f"{ref.name}-{ref.version}")


def _log_evaluation(r: EvalResult, ref, model: str, manifest: str,
                    labelled: list[tuple[str, str]], label_run_id: str):
    """Log `r` as an MLflow run (metrics also on the version's model): (run id, dataset)."""
    from registry import evaluations
    from registry.tracking import TrackedRun

    dataset = evaluations.labelled_dataset(labelled, str(manifest))
    with TrackedRun(EXPERIMENT, f"eval-{r.model_name}-{r.model_version}",
                    tags={"model_name": r.model_name, "model_version": r.model_version,
                          "model_uri": model, "manifest": str(manifest),
                          "label_run_id": label_run_id}) as run:
        run.log_params({"num_videos": r.num_videos, "manifest": str(manifest),
                        "sampling": r.sampling})
        metrics = {"top1": r.top1, "top5": r.top5, "num_videos": r.num_videos,
                   "num_errors": sum(r.errors.values())}
        metrics.update({evaluations.metric_key("acc_", c): a for c, a in r.per_class.items()})
        # a registered version's model gets the metrics too; a local folder has no model
        evaluations.record(run, dataset, metrics, model_id=ref.model_id)
        run.log_dict({"top1": r.top1, "top5": r.top5, "per_class": r.per_class,
                      "errors": r.errors, "error_uris": r.error_uris, "classes": r.classes,
                      "confusion": r.confusion, "sampling": r.sampling,
                      "dataset": {"name": dataset.name, "digest": dataset.digest}},
                     "evaluation.json")
        with tempfile.TemporaryDirectory() as tmp:
            plot_confusion(r.confusion, r.classes, Path(tmp) / "confusion.png",
                           f"{r.model_name} v{r.model_version}: top-1 {r.top1:.3f}")
            run.log_artifact(Path(tmp) / "confusion.png")
    return run.run_id, dataset
