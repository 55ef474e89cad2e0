"""A registered version is an MLflow pyfunc model: loaded by MLflow, it labels clips like TSM."""

from __future__ import annotations

import pickle

import cloudpickle
import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

import tsm_model
from pipeline.transforms import normalize
from registry import pyfunc
from registry import versions as registry

NAME = "tsm-py"


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    """A random ResNet-18 TSM whose outputs depend on the clip (MobileNetV2's barely do)."""
    torch.manual_seed(3)
    config = tsm_model.TSMConfig(arch="resnet18", num_classes=5, num_segments=4, input_size=32,
                                 resize_size=40, class_names=["a", "b", "c", "d", "e"],
                                 mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    model = tsm_model.build(config)
    torch.nn.init.normal_(model.new_fc.weight, 0.0, 0.5)
    return tsm_model.save(model, tmp_path_factory.mktemp("model") / "resnet")


def clips(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 3, 32, 32), dtype=np.uint8)


def reference(model_dir, x: np.ndarray, k: int):
    """What the label job computes: normalise, one backbone pass, softmax, top-k."""
    model = tsm_model.load(model_dir)
    c = model.config
    with torch.inference_mode():
        logits, emb = model.logits_and_features(normalize(torch.from_numpy(x), c.mean, c.std))
        probs = torch.softmax(logits, dim=1)
    scores, ids = probs.topk(k, dim=1)
    return ids.numpy(), scores.numpy(), emb.numpy()


def test_pyfunc_predict_is_the_model(store, resnet_dir):
    version = registry.register_model(resnet_dir, NAME)
    registry.set_alias(NAME, "champion", version)
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")

    x = clips(3, 0)
    out = loaded.predict(x)
    ids, scores, emb = reference(resnet_dir, x, k=5)
    assert len(out) == 3
    np.testing.assert_array_equal(np.stack(out["top_k_ids"]), ids)
    np.testing.assert_allclose(np.stack(out["top_k_scores"]), scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack(out["embedding"]), emb, rtol=1e-5, atol=1e-5)
    assert [row[0] for row in out["top_k_labels"]] == ["abcde"[i] for i in ids[:, 0]]
    # outputs depend on the clip, so a wrapper that mixed clips up would fail the checks above
    assert not np.allclose(scores[0], scores[1]) and not np.allclose(emb[0], emb[1])

    top2 = loaded.predict(x, params={"top_k": 2})
    np.testing.assert_array_equal(np.stack(top2["top_k_ids"]), ids[:, :2])

    # the signature: uint8 clips of the config's shape; MLflow refuses anything else
    spec = loaded.metadata.get_input_schema().inputs[0]
    assert spec.type == np.dtype(np.uint8) and spec.shape == (-1, 4, 3, 32, 32)
    assert loaded.metadata.get_output_schema().input_names() == [
        "top_k_labels", "top_k_scores", "top_k_ids", "embedding"]
    with pytest.raises(MlflowException):
        loaded.predict(clips(1, 1)[:, :3])  # 3 frames, not 4
    with pytest.raises(MlflowException):
        loaded.predict(clips(1, 1).astype(np.float32))


def test_pyfunc_load_by_version_never_unpickles(store, resnet_dir, monkeypatch):
    version = registry.register_model(resnet_dir, NAME)

    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    for mod, fn in ((pickle, "load"), (pickle, "loads"), (cloudpickle, "load"),
                    (cloudpickle, "loads"), (torch, "load")):
        monkeypatch.setattr(mod, fn, boom)
    # MLflow's own switch: with it off, a pickled PythonModel would not load at all
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    out = loaded.predict(clips(2, 5))
    ids, _, _ = reference(resnet_dir, clips(2, 5), k=5)
    np.testing.assert_array_equal(np.stack(out["top_k_ids"]), ids)


def test_pyfunc_is_logged_from_code_not_pickled(store, resnet_dir):
    version = registry.register_model(resnet_dir, NAME)
    model_id = registry.get_version(NAME, version).model_id
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}",
                                                dst_path=str(store / "dl"))
    conf = mlflow.models.Model.load(local).flavors["python_function"]
    assert conf["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert conf["model_code_path"].endswith(pyfunc.CODE_FILE.name)
    assert "python_model" not in conf  # the key of a cloudpickled PythonModel
    assert {k: v["path"] for k, v in conf["artifacts"].items()} == {
        "weights": "artifacts/model.safetensors", "config": "artifacts/config.json"}
    assert mlflow.models.Model.load(local).model_id == model_id
