"""The bundled model and `tsm demo`: real labels from the committed weights, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import output_rows
from safetensors.torch import load_file
from typer.testing import CliRunner

import tsm_model
from jobs import demo
from jobs.cli import app
from pipeline.transforms import normalize, resize_crop
from registry import versions as registry
from training.synthetic import VideoSpec, render


def clip(model, frames: np.ndarray) -> torch.Tensor:
    """The model's input for raw frames: TSN centre sampling, resize/crop, normalise."""
    c = model.config
    idx = np.linspace(0, len(frames) - 1, c.num_segments).round().astype(int)
    x = torch.from_numpy(resize_crop(frames[idx], c.resize_size, c.input_size))
    return normalize(x, c.mean, c.std)[None]


def test_bundled_tsm_sees_order_and_the_same_weights_as_tsn_do_not():
    tsm = tsm_model.load(tsm_model.BUNDLED)
    assert tsm.config.shift and tsm.config.class_names[:2] == ["move_right", "move_left"]
    # shift has no weights: TSN with the very same weights (the shift wrapper's ".net" dropped)
    tsn = tsm_model.build(tsm.config.replace(shift=False)).eval()
    weights = load_file(str(tsm_model.BUNDLED / "model.safetensors"))
    tsn.load_state_dict({k.replace(".net.", "."): v for k, v in weights.items()})
    flips = 0
    for seed in range(4):
        frames = render(VideoSpec("move_right", seed=100 + seed, size=128, num_frames=40,
                                  fps=20))
        x = clip(tsm, frames)
        with torch.inference_mode():
            a, b = tsn(x), tsn(x.flip(1))
            c, d = tsm(x), tsm(x.flip(1))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # TSN: order-blind, exactly
        assert (c - d).abs().max() > 0.1
        flips += int(c.argmax() != d.argmax())
    assert flips >= 3  # TSM: reversing the clip changes the predicted class


def test_demo_end_to_end_and_idempotent(store):
    res = CliRunner().invoke(app, ["demo", "--workdir", str(store / "demo"), "--videos", "10"])
    assert res.exit_code == 0, res.output
    assert "accuracy on 10 videos" in res.output
    rows = output_rows(str(store / "demo" / "labels")).to_pylist()
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)
    assert {r["model_version"] for r in rows} == {"1"}
    assert registry.alias_version(demo.MODEL_NAME, demo.ALIAS).version == "1"
    # the champion is an MLflow model: pyfunc loads it and labels like the bundled model
    import mlflow.pyfunc

    assert registry.get_version(demo.MODEL_NAME, "1").model_id
    pyfunc = mlflow.pyfunc.load_model(f"models:/{demo.MODEL_NAME}@{demo.ALIAS}")
    model = tsm_model.load(tsm_model.BUNDLED)
    frames = render(VideoSpec("move_left", seed=3, size=128, num_frames=40, fps=20))
    c = model.config
    idx = np.linspace(0, len(frames) - 1, c.num_segments).round().astype(int)
    uint8 = resize_crop(frames[idx], c.resize_size, c.input_size)[None]
    out = pyfunc.predict(uint8)
    with torch.inference_mode():
        expected = model(clip(model, frames)).softmax(1)[0]
    assert out["top_k_labels"][0][0] == c.class_names[int(expected.argmax())]
    assert out["top_k_scores"][0][0] == pytest.approx(float(expected.max()), abs=1e-5)
    # a second registration attempt reuses the version with the same weights
    assert registry.register_if_new(tsm_model.BUNDLED, demo.MODEL_NAME) == ("1", False)
    assert len(registry.list_versions(demo.MODEL_NAME)) == 1
    again = CliRunner().invoke(app, ["demo", "--workdir", str(store / "demo"), "--videos", "10"])
    assert again.exit_code == 0 and "already is tsm-synthetic version 1" in again.output


def test_demo_bad_flag_one_line(store):
    res = CliRunner().invoke(app, ["demo", "--videos", "0"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert [ln for ln in res.output.splitlines() if ln.strip()] == [
        "error: videos must be in [1, 5000], got 0"]
