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

    measured = registry.get_version("tsm-eval", v2)
    assert measured.metric("top1") == pytest.approx(result.top1, abs=1e-6)
    assert measured.metric("top5") == pytest.approx(result.top5, abs=1e-6)
    assert registry.get_version("tsm-eval", "1").metric("top1") is None  # only v2 measured


def synthetic_rows(path):
    with open(path, newline="") as f:
        return [(r["uri"], r["label"]) for r in csv.DictReader(f)]


def test_models_cli_register_list_promote(store):
    runner = CliRunner()
    res = runner.invoke(app, ["models", "register", str(tiny_model(store / "a", 0)),
                              "--name", "tsm-cli"])
    assert res.exit_code == 0 and "models:/tsm-cli/1" in res.output
    runner.invoke(app, ["models", "register", str(tiny_model(store / "b", 1)), "--name", "tsm-cli"])

    res = runner.invoke(app, ["models", "promote", "tsm-cli", "1"])
    assert res.exit_code == 2 and "no measured top-1" in res.output
    registry.record_metrics("tsm-cli", "1", {"top1": 0.9, "top5": 1.0})
    registry.record_metrics("tsm-cli", "2", {"top1": 0.5, "top5": 0.9})
    assert runner.invoke(app, ["models", "promote", "tsm-cli", "1"]).exit_code == 0

    res = runner.invoke(app, ["models", "promote", "tsm-cli", "2"])
    assert res.exit_code == 2 and "lower than @champion" in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1
    assert registry.alias_version("tsm-cli", "champion").version == "1"

    res = runner.invoke(app, ["models", "promote", "tsm-cli", "2", "--force"])
    assert res.exit_code == 0 and "was version 1" in res.output
    assert registry.alias_version("tsm-cli", "champion").version == "2"

    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "tsm-cli" in res.output and "champion" in res.output


@pytest.mark.parametrize("args, needle", [
    (["models", "register", "/no/such/dir", "--name", "x"], "not found"),
    (["models", "promote", "nope", "1"], "nope"),
    (["models", "list", "nope"], "nope"),
    (["evaluate", "--model", "models:/nope@champion", "--manifest", "m.csv"], "not found"),
])
def test_cli_errors_are_one_line(store, args, needle):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.output
