"""Where MLflow keeps runs and registered models.

Embedded default: a SQLite file `mlflow.db` in the working directory, so a
laptop needs no server. `MLFLOW_TRACKING_URI` (and `MLFLOW_REGISTRY_URI`)
point at a real server on a cluster.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DB = "mlflow.db"


def tracking_uri() -> str:
    """The tracking URI in force: the environment's, else the local SQLite file."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def configure_mlflow() -> str:
    """Point the mlflow client (tracking and registry) at `tracking_uri()`; return it."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI", uri))
    return uri
