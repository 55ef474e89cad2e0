"""The model actor: labels decoded clips, passes error rows through, never loses a row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import tsm_model
from pipeline.contract import ErrorKind, RunStamp
from pipeline.decode_stage import ClipResult, DecodeSpec, results_table
from pipeline.fetch_decode import FetchDecode
from pipeline.model_stage import ClipClassifier, ModelSpec
from pipeline.store import ObjectInfo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(n_ok: int, n_err: int, t: int = 4) -> pa.Table:
    rng = np.random.default_rng(0)
    video = {"num_frames": 9, "fps": 25.0, "duration_s": 0.36, "width": 64, "height": 48,
             "frame_indices": list(range(1, 2 * t, 2))}
    results = [
        ClipResult(ObjectInfo(f"v{i}.mp4", 10, f"e{i}"),
                   clip=rng.integers(0, 255, (t, 3, 32, 32), np.uint8), video=video)
        for i in range(n_ok)
    ] + [ClipResult(ObjectInfo(f"bad{i}.mp4", 10, "x"), error_kind=ErrorKind.CORRUPT,
                    error_message="nope") for i in range(n_err)]
    return results_table(results, DecodeSpec(FetchDecode(t, "uniform", 1 << 20, 1 << 20), 40,
                                             32, 60))


def _spec(tiny_model, **changes) -> ModelSpec:
    weights = (tiny_model / "model.safetensors").read_bytes()
    fields = dict(model_config=tsm_model.load_config(tiny_model), weights=weights,
                  stamp=RunStamp("tiny", "7", "r1", "uniform", 4), top_k=3, embeddings=True,
                  embedding_dtype="float32", use_gpu=False, bf16=False, torch_threads=1)
    return ModelSpec(**{**fields, **changes})


def test_labels_ok_rows_with_the_models_own_outputs_and_passes_errors_through(tiny_model):
    import torch

    from pipeline.transforms import normalize

    clf = ClipClassifier(_spec(tiny_model))
    batch = _batch(3, 2)
    table = clf(batch)
    assert table.schema == clf.schema and table.num_rows == 5
    rows_ = table.to_pylist()
    assert [r["status"] for r in rows_] == ["ok"] * 3 + ["error"] * 2
    assert rows_[3]["error_kind"] == "corrupt" and rows_[3]["top_k_labels"] is None
    assert np.isnan(rows_[3]["embedding"]).all() and rows_[3]["frame_indices"] is None
    ok = rows_[0]
    assert (ok["model_name"], ok["model_version"], ok["run_id"]) == ("tiny", "7", "r1")
    assert ok["frame_indices"] == [1, 3, 5, 7] and ok["num_frames"] == 9
    assert ok["error_kind"] is None and ok["error_message"] is None
    # the scores are the model's own softmax, in order, with the right names
    model = tsm_model.load(tiny_model, num_segments=4)
    clips = batch["clip"].combine_chunks().to_numpy()[:3].copy()
    x = normalize(torch.from_numpy(clips), model.config.mean, model.config.std)
    with torch.inference_mode():
        probs = torch.softmax(model(x), dim=1).numpy()
        emb = model.features(x).numpy()
    for i in range(3):
        top = np.argsort(-probs[i])[:3]
        assert rows_[i]["top_k_ids"] == top.tolist()
        assert rows_[i]["top_k_labels"] == [model.config.class_names[j] for j in top]
        np.testing.assert_allclose(rows_[i]["top_k_scores"], probs[i][top], rtol=1e-5)
        np.testing.assert_allclose(rows_[i]["embedding"], emb[i], rtol=1e-4, atol=1e-5)


def test_embeddings_off_and_float16(tiny_model):
    t = ClipClassifier(_spec(tiny_model, embeddings=False))(_batch(2, 0))
    assert all(np.isnan(e).all() for e in t["embedding"].to_pylist())
    t16 = ClipClassifier(_spec(tiny_model, embedding_dtype="float16"))(_batch(2, 0))
    assert t16.schema.field("embedding").type == pa.list_(pa.float16(), 1280)


def test_a_model_failure_becomes_error_rows_without_losing_any(tiny_model):
    # clips of 3 frames for a model loaded for 4 make the forward pass fail for every clip
    table = ClipClassifier(_spec(tiny_model))(_batch(2, 1, t=3))
    rows_ = table.to_pylist()
    assert [r["video_uri"] for r in rows_] == ["v0.mp4", "v1.mp4", "bad0.mp4"]
    assert [r["error_kind"] for r in rows_] == ["model_error", "model_error", "corrupt"]
    assert "model failed" in rows_[0]["error_message"]
    assert rows_[0]["num_frames"] == 9  # what was decoded is still recorded


def test_the_spec_is_made_from_the_job_settings(tiny_model):
    from pipeline.settings import LabelConfig

    cfg = LabelConfig(input="in", output="out", model="m", top_k=2, bf16=True)
    spec = ModelSpec.from_settings(tsm_model.load_config(tiny_model), b"w",
                                   RunStamp("a", "1", "r", "uniform", 4), cfg)
    assert (spec.top_k, spec.bf16, spec.use_gpu, spec.torch_threads) == (2, True, False, 1)
    gpu = ModelSpec.from_settings(spec.model_config, b"w", spec.stamp,
                                  LabelConfig(input="i", output="o", model="m", gpus_per_actor=1))
    assert gpu.use_gpu and gpu.torch_threads is None
