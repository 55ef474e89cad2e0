"""TSM as an MLflow pyfunc model: `mlflow.pyfunc.load_model("models:/NAME@champion")` runs it.

    model = mlflow.pyfunc.load_model("models:/tsm-synthetic@champion")
    out = model.predict(clips)            # uint8 numpy (B, T, 3, S, S), already resized/cropped
    out = model.predict(clips, params={"top_k": 3})
    out["top_k_labels"][0], out["top_k_scores"][0], out["embedding"][0]

What is logged: the same two files a saved model is (`model.safetensors`,
`config.json`) as the pyfunc model's artifacts, plus `tsm_pyfunc.py`, a
three-line code file, as the model itself. Loading reads the weights with
safetensors and the config with json (`tsm_model.from_bytes`).

Why "models from code" and not a `PythonModel` instance: given an instance,
MLflow cloudpickles it into `python_model.pkl` and unpickles that file on
every load (MLflow 3.17 does so by default; with
`MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false` it refuses to load such a model
at all). Given a code file instead, MLflow copies the file into the model
and, at load, runs it; the file builds `TSMClassifier` by importing it from
this package (so the project must be installed where the model is loaded,
which it is wherever `tsm` runs).
Nothing in a registered TSM version is ever unpickled, whichever way it is
loaded: `registry.versions.resolve_model` fetches only the two plain files, and
`mlflow.pyfunc.load_model` runs this package's code over them.

Logging goes through `mlflow.models.Model.log` rather than
`mlflow.pyfunc.log_model`: the latter has no `run_id` argument and reads the
fluent API's active run, the former (which it wraps) takes `run_id` and
`model_id` explicitly, so the project's client-API style holds (see
`log_model`).
"""

from __future__ import annotations

import contextlib
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
# names in the pyfunc `artifacts` dict; MLflow stores each file as artifacts/<its file name>
ARTIFACT_KEYS = {"weights": WEIGHTS, "config": CONFIG}
FILES_DIR = "artifacts"  # where, inside a logged model, the two files are
CODE_FILE = Path(__file__).with_name("tsm_pyfunc.py")  # the models-from-code entry
MODEL_TYPE = "tsm-video-classifier"
DEFAULT_TOP_K = 5
# what a loading environment needs besides this project (which must be importable there)
REQUIREMENTS = ("mlflow", "torch", "torchvision", "safetensors", "numpy", "pandas")


class TSMClassifier(mlflow.pyfunc.PythonModel):
    """Clips in, top-k labels, scores, class ids and a per-clip embedding out.

    Input: uint8 clips `(B, T, 3, S, S)` (T = the config's `num_segments`,
    S = its `input_size`), RGB, already resized and centre-cropped as the
    label job does (`pipeline.transforms.resize_crop`). `predict` scales them
    to [0, 1], normalises with the config's `mean`/`std` and runs the model in
    one backbone pass (`TSM.logits_and_features`). Output: a DataFrame, one row
    per clip, with the label job's columns `top_k_labels`, `top_k_scores`
    (softmax), `top_k_ids` and `embedding`. `params={"top_k": k}` changes k.
    """

    def load_context(self, context) -> None:
        import torch

        import tsm_model

        weights = Path(context.artifacts["weights"])
        config = Path(context.artifacts["config"])
        self.model = tsm_model.from_bytes(config.read_bytes(), weights.read_bytes(),
                                          source=str(weights.parent))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)

    # the np.ndarray hint: MLflow checks the tensor signature, and infers nothing from the hint
    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None):
        import pandas as pd
        import torch

        config = self.model.config
        clips = np.asarray(model_input)
        if clips.dtype != np.uint8 or clips.ndim != 5:
            raise ValueError(f"expected uint8 clips (B, T, 3, H, W), got {clips.dtype} "
                             f"{clips.shape}")
        k = int((params or {}).get("top_k") or DEFAULT_TOP_K)
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        k = min(k, config.num_classes)
        x = torch.from_numpy(np.ascontiguousarray(clips)).to(self.device)
        with torch.inference_mode():
            x = x.float().div_(255.0)
            mean = torch.tensor(config.mean, device=self.device).view(3, 1, 1)
            std = torch.tensor(config.std, device=self.device).view(3, 1, 1)
            logits, emb = self.model.logits_and_features(x.sub_(mean).div_(std))
            probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        emb = emb.float().cpu().numpy()
        # the label job's ranking: stable, so ties keep class order
        ids = np.argsort(-probs, axis=1, kind="stable")[:, :k].astype(np.int32)
        scores = np.take_along_axis(probs, ids, axis=1).astype(np.float32)
        names = config.class_names
        return pd.DataFrame({
            "top_k_labels": [[names[i] for i in row] for row in ids],
            "top_k_scores": list(scores),
            "top_k_ids": list(ids),
            "embedding": list(emb),
        })


def signature(config) -> Any:
    """The pyfunc signature for a `TSMConfig`: uint8 clips in, top-k and embedding out.

    The input is a tensor spec with a fixed clip shape, so MLflow itself
    rejects clips of the wrong dtype, frame count or size before `predict`.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    s = config.input_size
    clip = TensorSpec(np.dtype(np.uint8), (-1, config.num_segments, 3, s, s))
    outputs = Schema([ColSpec(Array("string"), "top_k_labels"),
                      ColSpec(Array("float"), "top_k_scores"),
                      ColSpec(Array("integer"), "top_k_ids"),
                      ColSpec(Array("float"), "embedding")])
    params = ParamSchema([ParamSpec("top_k", "long", min(DEFAULT_TOP_K, config.num_classes))])
    return ModelSignature(inputs=Schema([clip]), outputs=outputs, params=params)


def requirements() -> list[str]:
    """Pinned pip requirements of the loading environment (the installed versions)."""
    out = []
    for dist in REQUIREMENTS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(f"{dist}=={metadata.version(dist)}")
    return out


def log_model(client, run_id: str, model_dir: str | Path, *, name: str,
              tags: dict[str, str] | None = None, params: dict[str, str] | None = None):
    """Log the saved model in `model_dir` as an MLflow pyfunc model of run `run_id`.

    Returns the `LoggedModel` (its `model_id` is what a registered version
    points at). The LoggedModel is created with the client API in the run's
    experiment; `Model.log` then writes the MLmodel, the code file and the two
    files into it and marks it READY (or FAILED).
    """
    from mlflow.models import Model

    import tsm_model

    model_dir = Path(model_dir)
    config = tsm_model.load_config(model_dir)
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id,
                                        tags=tags, params=params, model_type=MODEL_TYPE)
    with warnings.catch_warnings():
        # "no input example": a clip batch as JSON would be megabytes; the signature says it all
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        # `mlflow.pyfunc.log_model` is `Model.log(flavor=mlflow.pyfunc, ...)` without the
        # run_id argument: calling Model.log directly needs no fluent active run
        Model.log(
            artifact_path=None,  # deprecated, positional; `name` replaces it
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=str(CODE_FILE),
            artifacts={key: str(model_dir / f) for key, f in ARTIFACT_KEYS.items()},
            signature=signature(config),
            pip_requirements=requirements(),
            flavor_name="pyfunc.ModelFromCode",
        )
    return client.get_logged_model(logged.model_id)
