"""Where MLflow keeps runs and registered models, and the one way runs are recorded.

Embedded default: a SQLite file `mlflow.db` in the working directory, so a
laptop needs no server. `MLFLOW_TRACKING_URI` (and `MLFLOW_REGISTRY_URI`)
point at a real server on a cluster.

Everything goes through `MlflowClient` (no global "active run" state), so
a run can be recorded from any thread, and two runs never get mixed up.
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

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
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
