"""The model registry against a real MLflow SQLite store in tmp_path."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from registry import versions as registry


def make_model_dir(path: Path, seed: int) -> Path:
    """A directory shaped like tsm_model.save output (weights content is arbitrary here)."""
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    save_file({"w": torch.randn(4, 4, generator=g)}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"arch": "resnet18", "num_classes": 4}))
    return path


def test_local_dir_resolves_with_content_version(store):
    d = make_model_dir(store / "m1", 0)
    ref = registry.resolve_model(str(d))
    assert ref.path == d.resolve()
    assert ref.name == "m1"
    assert ref.version == "local-" + registry.weights_digest(d)[:12]
    assert len(ref.version) == len("local-") + 12
    # different weights, different version
    other = registry.resolve_model(str(make_model_dir(store / "m2", 1)))
    assert other.version != ref.version


def test_register_resolve_by_version_and_alias(store):
    d1 = make_model_dir(store / "a", 0)
    d2 = make_model_dir(store / "b", 1)
    assert registry.register_model(d1, "tsm-x", tags={"arch": "resnet18"}) == "1"
    assert registry.register_model(d2, "tsm-x") == "2"

    ref = registry.resolve_model("models:/tsm-x/1")
    assert (ref.name, ref.version) == ("tsm-x", "1")
    assert sorted(p.name for p in ref.path.iterdir()) == sorted(registry.MODEL_FILES)
    assert (ref.path / "model.safetensors").read_bytes() == (d1 / "model.safetensors").read_bytes()

    registry.set_alias("tsm-x", "champion", "2")
    ref = registry.resolve_model("models:/tsm-x@champion")
    assert ref.version == "2"
    assert (ref.path / "model.safetensors").read_bytes() == (d2 / "model.safetensors").read_bytes()

    versions = registry.list_versions("tsm-x")
    assert [v.version for v in versions] == ["1", "2"]
    assert versions[1].aliases == ("champion",)
    assert versions[0].tags["arch"] == "resnet18"
    assert registry.find_version_by_digest("tsm-x", registry.weights_digest(d2)) == "2"


@pytest.mark.parametrize(
    "uri, needle",
    [
        ("models:/nope@champion", "nope"),
        ("models:/tsm-x@staging", "staging"),
        ("models:/tsm-x/7", "version 7"),
        ("models:/tsm-x", "bad model URI"),
        ("/no/such/dir", "not found"),
    ],
)
def test_unknown_model_clear_error(store, uri, needle):
    registry.register_model(make_model_dir(store / "a", 0), "tsm-x")
    with pytest.raises(registry.ModelNotFoundError, match=needle):
        registry.resolve_model(uri)


def test_resolve_never_unpickles(store, monkeypatch):
    """Only the two plain files are fetched; a pickle logged next to them is never loaded."""
    d = make_model_dir(store / "a", 0)
    version = registry.register_model(d, "tsm-x")
    run_id = registry.get_version("tsm-x", version).run_id
    evil = store / "evil.pkl"
    evil.write_bytes(pickle.dumps({"x": 1}))
    from mlflow import MlflowClient

    MlflowClient().log_artifact(run_id, str(evil), artifact_path=registry.ARTIFACT_DIR)

    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    ref = registry.resolve_model(f"models:/tsm-x/{version}")
    assert sorted(p.name for p in ref.path.iterdir()) == sorted(registry.MODEL_FILES)


def test_tampered_cache_is_refetched(store):
    d = make_model_dir(store / "a", 0)
    registry.register_model(d, "tsm-x")
    ref = registry.resolve_model("models:/tsm-x/1")
    (ref.path / "model.safetensors").write_bytes(b"garbage")
    ref = registry.resolve_model("models:/tsm-x/1")
    assert registry.weights_digest(ref.path) == registry.weights_digest(d)


def test_metrics_and_promotion_rules(store):
    v1 = registry.register_model(make_model_dir(store / "a", 0), "tsm-x")
    v2 = registry.register_model(make_model_dir(store / "b", 1), "tsm-x")
    v3 = registry.register_model(make_model_dir(store / "c", 2), "tsm-x")

    with pytest.raises(registry.PromotionRefused, match="no measured top-1"):
        registry.promote("tsm-x", v1)
    registry.record_metrics("tsm-x", v1, {"top1": 0.8, "top5": 0.95})
    registry.record_metrics("tsm-x", v2, {"top1": 0.7, "top5": 0.99})
    assert registry.get_version("tsm-x", v1).metric("top1") == pytest.approx(0.8)

    assert registry.promote("tsm-x", v1) is None
    with pytest.raises(registry.PromotionRefused, match="lower than @champion"):
        registry.promote("tsm-x", v2)
    assert registry.alias_version("tsm-x", "champion").version == v1
    assert registry.promote("tsm-x", v2, force=True) == v1
    assert registry.alias_version("tsm-x", "champion").version == v2
    # an unmeasured version is refused even against a champion, unless forced
    with pytest.raises(registry.PromotionRefused):
        registry.promote("tsm-x", v3)
    registry.promote("tsm-x", v3, force=True)
    assert registry.alias_version("tsm-x", "champion").version == v3
    with pytest.raises(registry.ModelNotFoundError):
        registry.promote("tsm-x", "9")
