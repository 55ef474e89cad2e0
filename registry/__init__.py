"""Models versioned in MLflow, and where runs are tracked.

- `registry.tracking`: the tracking store (embedded SQLite by default) and
  `TrackedRun`, the one way the project records an MLflow run;
- `registry.versions`: register, resolve (`models:/NAME@ALIAS`), list,
  alias and promote model versions, and their measured accuracy.
"""
