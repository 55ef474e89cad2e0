"""The model registry against a real MLflow SQLite store in tmp_path."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cloudpickle
import pytest
import torch
from safetensors.torch import save_file

from registry import evaluations
from registry import versions as registry
from registry.tracking import client as mlflow_client


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


def test_a_version_is_an_mlflow_model(store):
    """The version's source is a LoggedModel with an MLmodel, the two files and the digest."""
    d = make_model_dir(store / "a", 0)
    registry.register_model(d, "tsm-x")
    v = registry.get_version("tsm-x", "1")
    assert v.model_id and v.source == f"models:/{v.model_id}"
    client = mlflow_client()
    logged = client.get_logged_model(v.model_id)
    assert logged.status.to_int() == logged.status.READY.to_int()
    assert logged.tags[registry.DIGEST_TAG] == registry.weights_digest(d)
    assert json.loads(logged.tags[registry.MODEL_VERSIONS_TAG]) == [
        {"name": "tsm-x", "version": "1"}]
    assert logged.params["arch"] == "resnet18"
    files = {a.path for a in client.list_logged_model_artifacts(v.model_id)}
    assert {"MLmodel", "tsm_pyfunc.py", "artifacts"} <= files
    inner = {a.path for a in client.list_logged_model_artifacts(v.model_id, "artifacts")}
    assert inner == {"artifacts/model.safetensors", "artifacts/config.json"}
    assert not any(p.endswith(".pkl") for p in files | inner)  # models from code: no pickle
    assert v.run_id == logged.source_run_id


def test_same_weights_register_once(store):
    d = make_model_dir(store / "a", 0)
    assert registry.register_if_new(d, "tsm-x") == ("1", True)
    copy = make_model_dir(store / "copy", 0)  # the same weights in another folder
    assert registry.register_if_new(copy, "tsm-x") == ("1", False)
    assert registry.register_if_new(make_model_dir(store / "b", 1), "tsm-x") == ("2", True)
    assert [v.version for v in registry.list_versions("tsm-x")] == ["1", "2"]


def test_legacy_version_still_resolves(store):
    """A version made before pyfunc models (files straight in a run folder) still resolves."""
    from registry.tracking import TrackedRun

    d = make_model_dir(store / "a", 0)
    client = mlflow_client()
    with TrackedRun(registry.REGISTRY_EXPERIMENT, "legacy") as run:
        for f in registry.MODEL_FILES:
            run.log_artifact(d / f, artifact_path=registry.LEGACY_ARTIFACT_DIR)
    client.create_registered_model("tsm-old")
    source = f"{run.artifact_uri}/{registry.LEGACY_ARTIFACT_DIR}"
    client.create_model_version("tsm-old", source, run_id=run.run_id,
                                tags={registry.DIGEST_TAG: registry.weights_digest(d)})
    ref = registry.resolve_model("models:/tsm-old/1")
    assert registry.weights_digest(ref.path) == registry.weights_digest(d)
    assert ref.model_id is None and registry.get_version("tsm-old", "1").model_id is None


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
    """Only the two plain files are fetched; pickles logged next to them are never loaded."""
    d = make_model_dir(store / "a", 0)
    version = registry.register_model(d, "tsm-x")
    model_id = registry.get_version("tsm-x", version).model_id
    evil = store / "python_model.pkl"
    evil.write_bytes(pickle.dumps({"x": 1}))
    client = mlflow_client()
    client.log_model_artifact(model_id, str(evil))  # beside MLmodel, where MLflow would look
    client.log_model_artifacts(model_id, str(store / "a"), artifact_path="artifacts/more")
    (store / "evil").mkdir()
    (store / "evil" / "data.pkl").write_bytes(pickle.dumps([1]))
    client.log_model_artifacts(model_id, str(store / "evil"), artifact_path="artifacts")

    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    for mod, fn in ((pickle, "load"), (pickle, "loads"), (cloudpickle, "load"),
                    (cloudpickle, "loads"), (torch, "load")):
        monkeypatch.setattr(mod, fn, boom)
    ref = registry.resolve_model(f"models:/tsm-x/{version}")
    assert sorted(p.name for p in ref.path.iterdir()) == sorted(registry.MODEL_FILES)


def test_tampered_cache_is_refetched(store):
    d = make_model_dir(store / "a", 0)
    registry.register_model(d, "tsm-x")
    ref = registry.resolve_model("models:/tsm-x/1")
    (ref.path / "model.safetensors").write_bytes(b"garbage")
    ref = registry.resolve_model("models:/tsm-x/1")
    assert registry.weights_digest(ref.path) == registry.weights_digest(d)


def rows(n: int, tag: str) -> list[tuple[str, str]]:
    return [(f"s3://videos/{tag}/{i}.mp4", "ab"[i % 2]) for i in range(n)]


def test_evaluations_are_metrics_of_the_model_per_dataset(store):
    v1 = registry.register_model(make_model_dir(store / "a", 0), "tsm-x")
    big = evaluations.labelled_dataset(rows(24, "big"), "s3://manifests/big.csv")
    small = evaluations.labelled_dataset(rows(2, "small"), str(store / "small.csv"))
    assert big.digest != small.digest and len(big.digest) == evaluations.DIGEST_CHARS
    # the digest is the rows', in any order
    assert evaluations.labelled_dataset(rows(24, "big")[::-1], "x.csv").digest == big.digest

    first = registry.record_evaluation("tsm-x", v1, big, {"top1": 0.75, "num_videos": 24})
    registry.record_evaluation("tsm-x", v1, small, {"top1": 1.0, "num_videos": 2})
    last = registry.record_evaluation("tsm-x", v1, big, {"top1": 0.875, "num_videos": 24})

    v = registry.get_version("tsm-x", v1)
    assert [e.run_id for e in v.evaluations()][::2] == [first, last]  # none overwritten
    latest = v.latest_evaluations()
    assert list(latest) == [big.digest, small.digest]  # newest dataset first
    assert latest[big.digest].top1 == 0.875 and latest[big.digest].run_id == last
    assert latest[small.digest].num_videos == 2
    assert evaluations.dataset_source(latest[small.digest]) == str(store / "small.csv")

    # what MLflow itself holds: numeric metrics of the model, tied to run and dataset
    client = mlflow_client()
    top1 = [m for m in client.get_logged_model(v.model_id).metrics if m.key == "top1"]
    assert sorted((m.value, m.dataset_name, m.dataset_digest) for m in top1) == [
        (0.75, "big.csv", big.digest), (0.875, "big.csv", big.digest),
        (1.0, "small.csv", small.digest)]
    run = client.get_run(last)
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("big.csv", big.digest)
    assert json.loads(inp.dataset.profile)["num_rows"] == 24
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "evaluation"
    assert [m.model_id for m in run.inputs.model_inputs] == [v.model_id]
    assert run.data.metrics["top1"] == 0.875


def test_promotion_compares_only_on_the_same_dataset(store):
    v1 = registry.register_model(make_model_dir(store / "a", 0), "tsm-x")
    v2 = registry.register_model(make_model_dir(store / "b", 1), "tsm-x")
    v3 = registry.register_model(make_model_dir(store / "c", 2), "tsm-x")
    big = evaluations.labelled_dataset(rows(24, "big"), "s3://manifests/big.csv")
    small = evaluations.labelled_dataset(rows(2, "small"), "s3://manifests/small.csv")

    with pytest.raises(registry.PromotionRefused, match="has no evaluation"):
        registry.promote("tsm-x", v1)
    registry.record_evaluation("tsm-x", v1, big, {"top1": 0.875})
    assert registry.promote("tsm-x", v1) is None

    # the case: 1.0 on 2 videos is not better than 0.875 on 24
    registry.record_evaluation("tsm-x", v2, small, {"top1": 1.0})
    with pytest.raises(registry.PromotionRefused,
                       match=f"no evaluation on the dataset @champion.*{big.digest}.*big.csv"):
        registry.promote("tsm-x", v2)
    # measured on the champion's dataset, and worse there
    registry.record_evaluation("tsm-x", v2, big, {"top1": 0.5})
    with pytest.raises(registry.PromotionRefused, match=r"0\.5000 is lower than @champion"):
        registry.promote("tsm-x", v2)
    assert registry.alias_version("tsm-x", "champion").version == v1
    # its newest result on that dataset counts
    registry.record_evaluation("tsm-x", v2, big, {"top1": 0.875})
    assert registry.promote("tsm-x", v2) == v1
    # unmeasured: refused even with a champion, unless forced
    with pytest.raises(registry.PromotionRefused):
        registry.promote("tsm-x", v3)
    assert registry.promote("tsm-x", v3, force=True) == v2
    assert registry.alias_version("tsm-x", "champion").version == v3
    # the champion now was never measured: any measured candidate may replace it
    assert registry.promote("tsm-x", v1) == v3
    with pytest.raises(registry.ModelNotFoundError):
        registry.promote("tsm-x", "9")
