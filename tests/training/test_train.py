"""`tsm train` on a tiny real corpus: loss goes down, the best model is saved and registered."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import tsm_model
from jobs.cli import app
from registry import versions as registry
from training import synthetic
from training.clip_dataset import Augment, ClipDataset, read_labelled_manifest
from training.train_job import TrainConfig, model_config_from, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    cfg = synthetic.SynthConfig(videos=40, seed=3, size=32, min_frames=8, max_frames=12)
    return synthetic.generate(out, cfg)



TINY = {"arch": "resnet18", "num_segments": 4, "input_size": 32, "resize_size": 32,
        "dropout": 0.0}


def test_dataset_clips_and_augmentation(corpus):
    rows = [(u, 0) for u, _ in read_labelled_manifest(corpus["train"])][:2]
    val = ClipDataset(rows, 4, 24, 32, train=False)
    clip, label = val[0]
    assert clip.dtype == torch.uint8 and clip.shape == (4, 3, 24, 24) and label == 0
    assert torch.equal(val[0][0], clip)  # evaluation clips are deterministic
    tr = ClipDataset(rows, 4, 24, 32, train=True, augment=Augment(), seed=1)
    a = tr[0][0]
    assert a.shape == (4, 3, 24, 24)
    assert torch.equal(tr[0][0], a)  # same (seed, epoch, index), same clip
    tr.set_epoch(1)
    assert not torch.equal(tr[0][0], a)  # a new epoch draws new frames/crops


def test_model_config_sources(tmp_path):
    classes = ["a", "b", "c"]
    cfg = model_config_from(json.dumps({"arch": "mobilenetv2", "input_size": 64}),
                            {"shift": False, "input_size": None}, classes, None)
    assert (cfg.arch, cfg.input_size, cfg.shift, cfg.num_classes) == ("mobilenetv2", 64, False, 3)
    assert cfg.class_names == classes
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"arch": "resnet34"}))
    assert model_config_from(str(path), {}, classes, None).arch == "resnet34"
    with pytest.raises(ValueError):
        model_config_from("{not json", {}, classes, None)


def test_training_lowers_loss_and_registers(corpus, store):
    cfg = TrainConfig(corpus["train"], corpus["val"], epochs=4, batch_size=7, lr=3e-3,
                      warmup_epochs=0.5, seed=0, name="tsm-test", out_dir=store / "run",
                      workers=0, threads=1)
    # the training set again, unaugmented, as a fixed yardstick for the loss
    result = train(cfg, json.dumps(TINY), {})
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 4 and min(losses[2:]) < losses[0]
    assert result.version == "1" and result.registered
    saved = tsm_model.load(result.best_dir)
    assert saved.config.class_names == list(synthetic.CLASSES)
    assert saved.config.input_size == 32 and saved.config.shift

    v = registry.get_version("tsm-test", "1")
    assert v.tags["temporal"] == "tsm"
    assert float(v.tags["val_top1"]) == pytest.approx(result.best_val_top1, abs=1e-5)
    from mlflow import MlflowClient

    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["model.arch"] == "resnet18"
    hist = MlflowClient().get_metric_history(result.run_id, "val_top1")
    assert [m.step for m in hist] == [1, 2, 3, 4]
    # the version is an MLflow model, an output of the training run
    logged = MlflowClient().get_logged_model(v.model_id)
    assert logged.source_run_id == result.run_id
    outputs = MlflowClient().get_run(result.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [v.model_id]
    # the registered files are the saved best model
    ref = registry.resolve_model("models:/tsm-test/1")
    assert registry.weights_digest(ref.path) == registry.weights_digest(result.best_dir)


def test_fine_tune_from_init_keeps_backbone(corpus, store):
    base = tsm_model.build(tsm_model.TSMConfig(num_classes=3, class_names=["x", "y", "z"], **TINY))
    tsm_model.save(base, store / "init")
    cfg = TrainConfig(corpus["train"], corpus["val"], epochs=1, batch_size=7, lr=0.0,
                      name="tsm-ft", out_dir=store / "ft", init=store / "init", workers=0,
                      register=False)
    result = train(cfg, None, {})
    tuned = tsm_model.load(result.best_dir)
    assert tuned.config.num_classes == 10  # new classifier for the manifest's classes
    # lr 0: the backbone weights came from the init model unchanged
    w0 = base.base_model.conv1.weight.detach()
    assert torch.allclose(tuned.base_model.conv1.weight, w0)
    assert result.version is None


@pytest.mark.parametrize("args, needle", [
    (["--train", "missing.csv", "--val", "missing.csv"], "manifest not found"),
    (["--train", "{train}", "--val", "{val}", "--arch", "vgg"], "arch"),
    (["--train", "{train}", "--val", "{val}", "--epochs", "0"], "epochs must be >= 1"),
    (["--train", "{train}", "--val", "{val}", "--lr", "-1"], "lr must be >= 0"),
])
def test_cli_bad_input_is_one_line(corpus, store, args, needle):
    args = [a.format(train=corpus["train"], val=corpus["val"]) for a in args]
    res = CliRunner().invoke(app, ["train", *args, "--out", str(store / "o")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.output


def test_tsn_is_blind_to_frame_order_and_tsm_is_not():
    torch.manual_seed(0)
    clip = torch.randn(2, 8, 3, 32, 32)
    cfg = tsm_model.TSMConfig(arch="resnet18", num_classes=10, input_size=32, resize_size=32)
    tsn = tsm_model.build(cfg.replace(shift=False)).eval()
    tsm = tsm_model.build(cfg).eval()
    for m in (tsn, tsm):  # a non-trivial classifier so logits differ visibly
        torch.nn.init.normal_(m.new_fc.weight, 0, 0.5)
    with torch.inference_mode():
        a, b = tsn(clip), tsn(clip.flip(1))
        c, d = tsm(clip), tsm(clip.flip(1))
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
    assert (c - d).abs().max() > 1e-3
