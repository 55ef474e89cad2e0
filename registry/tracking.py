"""Where MLflow keeps runs and registered models, and the one way runs are recorded.

Embedded default: a SQLite file `mlflow.db` in the working directory, so a
laptop needs no server. `MLFLOW_TRACKING_URI` (and `MLFLOW_REGISTRY_URI`)
point at a real server on a cluster.

Everything goes through `MlflowClient` (no global "active run" state), so
a run can be recorded from any thread, and two runs never get mixed up.
The one use of MLflow's model-logging machinery, `registry.pyfunc.log_model`,
calls `mlflow.models.Model.log` with an explicit run id and LoggedModel id,
so it needs no active run either.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_DB = "mlflow.db"


def tracking_uri() -> str:
    """The tracking URI in force: the environment's, else the local SQLite file."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def client():
    """An MlflowClient on `tracking_uri()` (and `MLFLOW_REGISTRY_URI` for the registry)."""
    import mlflow
    from mlflow import MlflowClient

    # "Creating initial MLflow database tables..." on a fresh store is noise in a CLI answer
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    uri = tracking_uri()
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI", uri)
    # artifact helpers (mlflow.artifacts) read the global URIs: keep them the same
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=registry_uri)


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created if it does not exist."""
    c = client()
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else c.create_experiment(name)


class TrackedRun:
    """One MLflow run: create it, log to it, finish it.

        run = TrackedRun("tsm-label", "label tsm v3", tags={...})
        run.log_params({...}); run.log_metrics({...}, step=1); run.finish("FINISHED")

    Used as a context manager it finishes FINISHED, or FAILED on an exception.
    """

    def __init__(self, experiment: str, name: str, tags: dict[str, str] | None = None):
        self.tracking_uri = tracking_uri()
        self.client = client()
        run = self.client.create_run(experiment_id(experiment),
                                     tags={"mlflow.runName": name, **(tags or {})})
        self.run_id: str = run.info.run_id
        self.artifact_uri: str = run.info.artifact_uri

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self.finish("FAILED" if exc_type is not None else "FINISHED")

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0, *,
                    model_id: str | None = None, dataset: Any = None) -> None:
        """Log metrics; with `model_id` they are also the LoggedModel's, with `dataset`
        (an `mlflow.data` dataset: its name and digest) they say what they were measured on.
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        where: dict[str, Any] = {"model_id": model_id, "run_id": self.run_id}
        if dataset is not None:
            where.update(dataset_name=dataset.name, dataset_digest=dataset.digest)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), now, step, **where) for k, v in metrics.items()],
        )

    def log_inputs(self, datasets: list[tuple[Any, str]] = (),
                   model_ids: list[str] = ()) -> None:
        """Record what the run read: `(mlflow.data dataset, context)` pairs (the context,
        e.g. "evaluation", becomes the input's `mlflow.data.context` tag) and LoggedModels.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        def entity(d) -> Dataset:  # what mlflow.log_input does, with public calls only
            fields = d.to_dict()
            return Dataset(fields["name"], fields["digest"], fields["source_type"],
                           fields["source"], fields.get("schema"), fields.get("profile"))

        self.client.log_inputs(
            self.run_id,
            datasets=[DatasetInput(entity(d), [InputTag(MLFLOW_DATASET_CONTEXT, ctx)])
                      for d, ctx in datasets],
            models=[LoggedModelInput(m) for m in model_ids],
        )

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_dict(self, data: Any, name: str) -> None:
        """`data` as a JSON artifact called `name`."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(data, indent=1) + "\n")
            self.log_artifact(path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
