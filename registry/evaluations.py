"""Evaluations of registered models: metrics on the MLflow model, tied to the dataset measured.

In MLflow 3 a metric can belong to a LoggedModel (the logged pyfunc model a
registered version points at) and name the dataset it was measured on
(`Metric(model_id=..., dataset_name=..., dataset_digest=..., run_id=...)`).
An evaluation is one run (`training.evaluation` makes it) that:

- logs the labelled manifest as a dataset input: its name (the manifest's
  file name), its digest (`manifest_digest`: the (uri, label) rows, in any
  order) and its size (`num_rows` in the dataset's profile);
- logs the model as a model input;
- logs `top1`, `top5`, `acc_<class>`, `num_videos` and `num_errors` as
  metrics of that run, of the model and of that dataset (`record`).

Every evaluation keeps its own record, a new one never overwrites an older
one: `evaluations(model_id)` lists them all, `latest_by_dataset` keeps the
newest per dataset digest. Results on different datasets are never compared
(see `registry.versions.promote`).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.tracking import TrackedRun, client

CONTEXT = "evaluation"  # the dataset input's mlflow.data.context tag
DIGEST_CHARS = 16  # of the sha256 hex: MLflow stores dataset digests in 36 characters


def manifest_digest(rows: list[tuple[str, str]]) -> str:
    """The identity of a labelled manifest: sha256 of its sorted (uri, label) rows, shortened."""
    canonical = json.dumps(sorted([str(u), str(lab)] for u, lab in rows), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_CHARS]


def _source(manifest: str) -> str:
    """A local manifest as an absolute path (the dataset's source); URIs unchanged."""
    return manifest if "://" in manifest else str(Path(manifest).resolve())


def labelled_dataset(rows: list[tuple[str, str]], manifest: str, name: str | None = None):
    """The labelled manifest as an `mlflow.data` pandas dataset (name, digest, source, size)."""
    import mlflow.data
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["uri", "label"])
    with warnings.catch_warnings():
        # "the dataset source can be interpreted in multiple ways": both are the local file
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(
            frame, source=_source(str(manifest)), targets="label",
            name=name or Path(str(manifest).rstrip("/")).name, digest=manifest_digest(rows))


def metric_key(prefix: str, name: str) -> str:
    """`prefix + name` with characters MLflow refuses in metric names replaced by `_`."""
    return prefix + re.sub(r"[^\w\-. /]", "_", name)


def record(run: TrackedRun, dataset, metrics: dict[str, float],
           model_id: str | None = None) -> None:
    """Log `metrics` measured on `dataset` in `run`; with `model_id`, on that model too."""
    run.log_inputs(datasets=[(dataset, CONTEXT)], model_ids=[model_id] if model_id else [])
    run.log_metrics(metrics, model_id=model_id, dataset=dataset)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a model: the dataset, the run that measured it, what it measured."""

    dataset_name: str
    dataset_digest: str
    run_id: str
    timestamp_ms: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def top1(self) -> float | None:
        return self.metrics.get("top1")

    @property
    def top5(self) -> float | None:
        return self.metrics.get("top5")

    @property
    def num_videos(self) -> int | None:
        n = self.metrics.get("num_videos")
        return None if n is None else int(n)

    def describe(self) -> str:
        """`dataset NAME (digest D, N videos)`, for messages."""
        size = f", {self.num_videos} videos" if self.num_videos is not None else ""
        return f"dataset {self.dataset_name} (digest {self.dataset_digest}{size})"


def evaluations(model_id: str | None) -> list[Evaluation]:
    """Every evaluation recorded on a LoggedModel, oldest first (none for None)."""
    from mlflow.exceptions import MlflowException

    if not model_id:
        return []
    try:
        model = client().get_logged_model(model_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":  # the model was deleted: nothing measured
            return []
        raise
    runs: dict[tuple[str, str, str], dict[str, Any]] = {}
    for m in model.metrics or []:
        if not m.dataset_digest or not m.run_id:
            continue  # e.g. a training metric copied onto the model: no dataset, not comparable
        rec = runs.setdefault((m.run_id, m.dataset_name, m.dataset_digest),
                              {"ts": m.timestamp, "metrics": {}})
        rec["ts"] = max(rec["ts"], m.timestamp)
        rec["metrics"][m.key] = m.value
    out = [Evaluation(name, digest, run_id, rec["ts"], rec["metrics"])
           for (run_id, name, digest), rec in runs.items()]
    return sorted(out, key=lambda e: (e.timestamp_ms, e.run_id))


def latest_by_dataset(evals: list[Evaluation]) -> dict[str, Evaluation]:
    """digest -> the newest evaluation on that dataset, newest dataset first."""
    latest: dict[str, Evaluation] = {}
    for e in evals:  # oldest first: later ones replace earlier ones
        latest[e.dataset_digest] = e
    return dict(sorted(latest.items(), key=lambda kv: (-kv[1].timestamp_ms, kv[0])))


def dataset_source(evaluation: Evaluation) -> str | None:
    """Where the evaluated manifest was read from (its dataset input's source), if recorded."""
    run = client().get_run(evaluation.run_id)
    for inp in (run.inputs.dataset_inputs if run.inputs else None) or []:
        d = inp.dataset
        if d.digest == evaluation.dataset_digest and d.name == evaluation.dataset_name:
            try:
                source = json.loads(d.source)
            except (TypeError, ValueError):
                return d.source or None
            if isinstance(source, dict):
                return source.get("uri") or source.get("url")
            return None
    return None
