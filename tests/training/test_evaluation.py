"""`tsm evaluate` and `tsm models ...` against a real SQLite store, real Ray and real videos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import output_rows
from mlflow import MlflowClient
from typer.testing import CliRunner

import tsm_model
from jobs.cli import app
from registry import evaluations
from registry import versions as registry
from training import synthetic
from training.evaluation import evaluate, score


def tiny_model(path, seed: int):
    import torch

    torch.manual_seed(seed)
    cfg = tsm_model.TSMConfig(arch="resnet18", num_classes=10, num_segments=4, input_size=32,
                              resize_size=32, class_names=list(synthetic.CLASSES))
    return tsm_model.save(tsm_model.build(cfg), path)


def test_score_counts_errors_as_wrong():
    classes = ["a", "b", "c"]
    labelled = [("u1", "a"), ("u2", "b"), ("u3", "c"), ("u4", "a")]
    preds = {
        "u1": {"status": "ok", "top_k_labels": ["a", "b"], "error_kind": None},
        "u2": {"status": "ok", "top_k_labels": ["c", "b"], "error_kind": None},
        "u3": {"status": "error", "top_k_labels": None, "error_kind": "corrupt"},
    }
    top1, top5, per_class, errors, confusion, bad = score(labelled, preds, classes)
    assert top1 == 0.25 and top5 == 0.5
    assert per_class == {"a": 0.5, "b": 0.0, "c": 0.0}
    assert errors == {"corrupt": 1, "missing": 1}
    assert bad == ["u3", "u4"]
    assert confusion[1][2] == 1 and confusion[2][3] == 1 and confusion[0][3] == 1


def test_evaluate_logs_against_the_version(store):
    manifests = synthetic.generate(store / "corpus", synthetic.SynthConfig(
        videos=10, seed=4, size=32, min_frames=8, max_frames=10, split_fractions=(1, 0, 0)))
    broken = store / "corpus" / "videos" / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with open(manifests["train"], "a", newline="") as f:
        csv.writer(f).writerow([str(broken), "move_left"])

    registry.register_model(tiny_model(store / "m1", 0), "tsm-eval")
    v2 = registry.register_model(tiny_model(store / "m2", 1), "tsm-eval")
    registry.set_alias("tsm-eval", "candidate", v2)

    result = evaluate("models:/tsm-eval@candidate", str(manifests["train"]), str(store / "out"))
    assert result.model_version == v2 and result.num_videos == 11
    assert result.errors == {"corrupt": 1}
    assert result.error_uris == [str(broken)]

    # recompute top-1 from the Parquet the label job wrote: error row counts as wrong
    labels = dict(synthetic_rows(manifests["train"]))
    rows = output_rows(str(store / "out")).to_pylist()
    assert len(rows) == 11
    hits = sum(r["status"] == "ok" and r["top_k_labels"][0] == labels[r["video_uri"]]
               for r in rows)
    assert result.top1 == pytest.approx(hits / 11)

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.tags["model_name"] == "tsm-eval"
    assert run.data.tags["model_version"] == v2
    assert run.data.metrics["top1"] == pytest.approx(result.top1)
    assert run.data.metrics["num_errors"] == 1
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"confusion.png", "evaluation.json"} <= artifacts
    local = client.download_artifacts(result.run_id, "evaluation.json", str(store / "dl"))
    report = json.loads(Path(local).read_text())
    assert sum(map(sum, report["confusion"])) == 11

    # the manifest is the run's dataset input: name, digest of its rows, size
    rows = synthetic_rows(manifests["train"])
    digest = evaluations.manifest_digest(rows)
    assert (result.dataset_name, result.dataset_digest) == (manifests["train"].name, digest)
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == (manifests["train"].name, digest)
    assert json.loads(inp.dataset.profile)["num_rows"] == 11
    assert json.loads(inp.dataset.source)["uri"] == str(manifests["train"].resolve())

    # the metrics are numbers on the version's MLflow model, tied to that dataset and run
    measured = registry.get_version("tsm-eval", v2)
    assert [m.model_id for m in run.inputs.model_inputs] == [measured.model_id]
    metrics = {m.key: m for m in client.get_logged_model(measured.model_id).metrics}
    assert metrics["top1"].value == pytest.approx(result.top1)
    assert metrics["top5"].value == pytest.approx(result.top5)
    assert metrics["num_videos"].value == 11
    assert {k for k in metrics if k.startswith("acc_")} == {
        f"acc_{c}" for c in result.per_class}
    assert all((m.dataset_digest, m.run_id) == (digest, result.run_id) for m in metrics.values())
    assert "top1" not in measured.tags  # no longer a tag
    assert registry.get_version("tsm-eval", "1").evaluations() == []  # only v2 measured

    # a second evaluation keeps its own record (the labels are reused: same output)
    again = evaluate("models:/tsm-eval@candidate", str(manifests["train"]), str(store / "out"))
    runs = [e.run_id for e in registry.get_version("tsm-eval", v2).evaluations()]
    assert runs == [result.run_id, again.run_id]
    latest = registry.get_version("tsm-eval", v2).latest_evaluations()
    assert list(latest) == [digest] and latest[digest].run_id == again.run_id


def test_evaluate_sampling_reaches_the_rows_and_the_run(store):
    """`--sampling keyframe` reaches the label job's rows and the run's params; an output
    holding both samplings is scored on the one asked for, not on whichever came last."""
    from pipeline.sampling import segment_indices
    from training.evaluation import read_predictions

    # 16-20 frames with x264's default GOP: one keyframe (frame 0), so keyframe sampling
    # takes each later segment's first frame, never all the centres
    manifests = synthetic.generate(store / "corpus", synthetic.SynthConfig(
        videos=4, seed=5, size=32, min_frames=16, max_frames=20, split_fractions=(1, 0, 0)))
    model = str(tiny_model(store / "m", 0))
    out = str(store / "out")

    res = CliRunner().invoke(app, ["evaluate", "-m", model, "--manifest",
                                   str(manifests["train"]), "--output", out, "--sampling",
                                   "keyframe", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    keyframe = json.loads(res.stdout)
    assert keyframe["sampling"] == "keyframe" and keyframe["num_videos"] == 4
    rows = output_rows(out).to_pylist()
    assert len(rows) == 4 and {r["sampling"] for r in rows} == {"keyframe"}
    assert all(r["frame_indices"] != segment_indices(r["num_frames"], 4).tolist()
               for r in rows)
    client = MlflowClient()
    assert client.get_run(keyframe["run_id"]).data.params["sampling"] == "keyframe"

    # uniform (the default) into the same output: labelled again, newer rows
    uniform = evaluate(model, str(manifests["train"]), out)
    assert uniform.sampling == "uniform"
    assert client.get_run(uniform.run_id).data.params["sampling"] == "uniform"
    rows = output_rows(out).to_pylist()
    assert sorted(r["sampling"] for r in rows) == ["keyframe"] * 4 + ["uniform"] * 4
    assert all(r["frame_indices"] == segment_indices(r["num_frames"], 4).tolist()
               for r in rows if r["sampling"] == "uniform")

    # each sampling is read back as itself, though the uniform rows are the latest
    name, version = uniform.model_name, uniform.model_version
    for mode in ("keyframe", "uniform"):
        found = read_predictions(out, name, version, sampling=mode, num_segments=4)
        assert len(found) == 4 and {r["sampling"] for r in found.values()} == {mode}
    assert read_predictions(out, name, version, sampling="uniform", num_segments=8) == {}

    res = CliRunner().invoke(app, ["evaluate", "-m", model, "--manifest",
                                   str(manifests["train"]), "--sampling", "middle"])
    assert res.exit_code == 2 and "sampling must be one of uniform, keyframe" in res.output


def synthetic_rows(path):
    with open(path, newline="") as f:
        return [(r["uri"], r["label"]) for r in csv.DictReader(f)]


def labelled(n: int, tag: str) -> list[tuple[str, str]]:
    return [(f"/videos/{tag}/{i}.mp4", synthetic.CLASSES[i % 2]) for i in range(n)]


def test_models_cli_register_list_promote(store):
    runner = CliRunner()
    res = runner.invoke(app, ["models", "register", str(tiny_model(store / "a", 0)),
                              "--name", "tsm-cli"])
    assert res.exit_code == 0 and "models:/tsm-cli/1" in res.output
    runner.invoke(app, ["models", "register", str(tiny_model(store / "b", 1)), "--name", "tsm-cli"])
    # the same weights again: said so, nothing new
    res = runner.invoke(app, ["models", "register", str(store / "a"), "--name", "tsm-cli"])
    assert res.exit_code == 0 and "already registered as version 1" in res.output
    assert [v.version for v in registry.list_versions("tsm-cli")] == ["1", "2"]

    res = runner.invoke(app, ["models", "promote", "tsm-cli", "1"])
    assert res.exit_code == 2 and "has no evaluation" in res.output
    big = evaluations.labelled_dataset(labelled(24, "big"), "/manifests/big.csv")
    small = evaluations.labelled_dataset(labelled(2, "small"), "/manifests/small.csv")
    registry.record_evaluation("tsm-cli", "1", big, {"top1": 0.875, "top5": 1.0,
                                                     "num_videos": 24})
    assert runner.invoke(app, ["models", "promote", "tsm-cli", "1"]).exit_code == 0

    # 1.0 on two videos is no evidence against 0.875 on 24: another dataset
    registry.record_evaluation("tsm-cli", "2", small, {"top1": 1.0, "num_videos": 2})
    res = runner.invoke(app, ["models", "promote", "tsm-cli", "2"])
    assert res.exit_code == 2 and "no evaluation on the dataset @champion" in res.output
    assert f"digest {big.digest}, 24 videos" in res.output and "/manifests/big.csv" in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1

    registry.record_evaluation("tsm-cli", "2", big, {"top1": 0.5, "num_videos": 24})
    res = runner.invoke(app, ["models", "promote", "tsm-cli", "2"])
    assert res.exit_code == 2 and "lower than @champion" in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1
    assert registry.alias_version("tsm-cli", "champion").version == "1"

    res = runner.invoke(app, ["models", "promote", "tsm-cli", "2", "--force"])
    assert res.exit_code == 0 and "was version 1" in res.output
    assert registry.alias_version("tsm-cli", "champion").version == "2"

    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "tsm-cli" in res.output and "champion" in res.output
    assert big.digest in res.output and small.digest in res.output


def test_models_info_any_uri(store):
    runner = CliRunner()
    folder = tiny_model(store / "a", 0)
    registry.register_model(folder, "tsm-info", tags={"val_top1": "0.500000"})
    registry.set_alias("tsm-info", "champion", "1")
    big = evaluations.labelled_dataset(labelled(24, "big"), "/manifests/big.csv")
    registry.record_evaluation("tsm-info", "1", big, {"top1": 0.875, "top5": 1.0,
                                                      "num_videos": 24})
    for uri in ("models:/tsm-info/1", "models:/tsm-info@champion"):
        res = runner.invoke(app, ["models", "info", uri])
        assert res.exit_code == 0, res.output
        assert "arch: resnet18" in res.stdout and "registered: tsm-info version 1" in res.stdout
        assert f"big.csv (digest {big.digest}, 24 videos): top-1 0.8750" in res.stdout
        assert "tags: val_top1=0.500000" in res.stdout
    res = runner.invoke(app, ["models", "info", "models:/tsm-info/1", "--json"])
    info = json.loads(res.stdout)
    assert info["registered"]["aliases"] == ["champion"] and info["registered"]["pyfunc"]
    assert info["registered"]["weights_sha256"] == registry.weights_digest(folder)
    assert info["registered"]["latest_evaluations"][0]["dataset_digest"] == big.digest
    assert info["config"] == tsm_model.load_config(folder).to_dict()
    # a folder, as before; an unknown version is one line
    res = runner.invoke(app, ["models", "info", str(folder), "--json"])
    assert res.exit_code == 0 and "registered" not in json.loads(res.stdout)
    res = runner.invoke(app, ["models", "info", "models:/tsm-info/7"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "version 7" in res.stderr


@pytest.mark.parametrize("args, needle", [
    (["models", "register", "/no/such/dir", "--name", "x"], "not found"),
    (["models", "promote", "nope", "1"], "nope"),
    (["models", "list", "nope"], "nope"),
    (["models", "info", "models:/nope@champion"], "nope"),
    (["evaluate", "--model", "models:/nope@champion", "--manifest", "m.csv"], "not found"),
])
def test_cli_errors_are_one_line(store, args, needle):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.output
