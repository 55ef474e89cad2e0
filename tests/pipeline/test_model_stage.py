"""The model actor: labels decoded clips, passes error rows through, never loses a row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import tsm_model
from pipeline.contract import ErrorKind, RunStamp
from pipeline.decode_stage import ClipResult, read_clips, results_table
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
    return results_table(results)


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
    clips = read_clips(batch["clip"], (4, 3, 32, 32))[1][:3].copy()
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


def test_a_model_failure_becomes_error_rows_without_losing_any(tiny_model, monkeypatch):
    clf = ClipClassifier(_spec(tiny_model))
    real = clf.model.logits_and_features

    def fails_on_bright_clips(x):
        if float(x.amax()) > 1.5:  # a clip of 255s (normalised: ~2.2) is in: the forward fails
            raise RuntimeError("kernel failed")
        return real(x)

    batch = _batch(3, 1)
    clips = read_clips(batch["clip"], (4, 3, 32, 32))[1].copy()
    clips[0], clips[1:] = 255, 0
    batch = batch.set_column(batch.schema.get_field_index("clip"), "clip", pa.array(
        [c.tobytes() for c in clips] + [None], pa.large_binary()))
    monkeypatch.setattr(clf.model, "logits_and_features", fails_on_bright_clips)
    rows_ = clf(batch).to_pylist()
    assert [r["video_uri"] for r in rows_] == ["v0.mp4", "v1.mp4", "v2.mp4", "bad0.mp4"]
    assert [r["error_kind"] for r in rows_] == ["model_error", None, None, "corrupt"]
    assert "model failed: RuntimeError: kernel failed" in rows_[0]["error_message"]
    assert rows_[0]["num_frames"] == 9  # what was decoded is still recorded


def test_on_cpu_a_batch_goes_through_the_model_a_few_clips_at_a_time(tiny_model, monkeypatch):
    import pipeline.model_stage as stage

    whole = ClipClassifier(_spec(tiny_model))(_batch(5, 1)).to_pylist()
    clf = ClipClassifier(_spec(tiny_model))
    sizes = []
    real = clf.model.logits_and_features

    def counting(x):
        sizes.append(len(x))
        return real(x)

    monkeypatch.setattr(clf.model, "logits_and_features", counting)
    # passes of two 4-frame 32 px clips: 5 clips in passes of 2, 2, 1; the same labels
    monkeypatch.setattr(stage, "CPU_PIXELS_PER_PASS", 2 * 4 * 32 * 32)
    chunked = clf(_batch(5, 1)).to_pylist()
    assert sizes == [2, 2, 1]
    for a, b in zip(whole, chunked, strict=True):
        assert (a["top_k_ids"], a["error_kind"]) == (b["top_k_ids"], b["error_kind"])
        np.testing.assert_allclose(a["embedding"], b["embedding"], rtol=1e-4, atol=1e-5)


def test_clips_per_pass_follows_the_frame_size_on_cpu_and_is_the_batch_on_gpu():
    from pipeline.model_stage import clips_per_pass

    r224 = tsm_model.TSMConfig(arch="resnet18", num_classes=4, num_segments=8, input_size=224,
                               resize_size=256)
    r32 = tsm_model.TSMConfig(arch="resnet18", num_classes=4, num_segments=8, input_size=32,
                              resize_size=36)
    assert clips_per_pass(r224, use_gpu=False, batch=8) == 1
    assert clips_per_pass(r32, use_gpu=False, batch=8) == 8  # small frames: the whole batch
    assert clips_per_pass(r224, use_gpu=True, batch=32) == 32


def test_on_cpu_models_of_112_px_and_up_run_channels_last_with_the_same_outputs():
    import torch

    from pipeline.model_stage import for_inference

    torch.manual_seed(0)
    big = tsm_model.build(tsm_model.TSMConfig(arch="resnet18", num_classes=3, num_segments=2,
                                              input_size=112, resize_size=128)).eval()
    x = torch.randn(1, 2, 3, 112, 112)
    with torch.inference_mode():
        before = big.logits_and_features(x)
        fast = for_inference(big, use_gpu=False)
        after = fast.logits_and_features(x)
    assert fast.base_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    small = tsm_model.build(tsm_model.TSMConfig(arch="resnet18", num_classes=3, num_segments=2,
                                                input_size=32, resize_size=36))
    assert not for_inference(small, use_gpu=False).base_model.conv1.weight.is_contiguous(
        memory_format=torch.channels_last)  # tiny frames: NCHW is faster


def test_clips_of_the_wrong_size_become_error_rows(tiny_model):
    # clips of 3 frames for a model loaded for 4: every row gets out, as an error
    rows_ = ClipClassifier(_spec(tiny_model))(_batch(2, 1, t=3)).to_pylist()
    assert [r["error_kind"] for r in rows_] == ["model_error", "model_error", "corrupt"]
    assert "model stage failed" in rows_[0]["error_message"]


def test_the_spec_is_made_from_the_job_settings(tiny_model):
    from pipeline.decode_stage import DecodeSpec
    from pipeline.settings import LabelConfig

    cfg = LabelConfig(input="in", output="out", model="m", top_k=2, bf16=True, torch_threads=3)
    mc = tsm_model.load_config(tiny_model)
    stamp = RunStamp("a", "1", "r", "uniform", 4)
    spec = ModelSpec.from_settings(mc, b"w", stamp, cfg, cfg.shares())
    assert (spec.top_k, spec.bf16, spec.use_gpu, spec.torch_threads) == (2, True, False, 3)
    assert spec.dali is None and spec.decode is None
    # the actors' batch: 8 clips on CPU, 32 with GPUs, unless the flag says
    assert cfg.clips_per_batch == 8
    assert LabelConfig(input="i", output="o", model="m", gpus_per_actor=1).clips_per_batch == 32
    gpu_cfg = LabelConfig(input="i", output="o", model="m", gpus_per_actor=1, batch_size=64)
    gpu = ModelSpec.from_settings(mc, b"w", stamp, gpu_cfg, gpu_cfg.shares(),
                                  decode=DecodeSpec.from_settings(mc, gpu_cfg, "nvdec"))
    assert gpu.use_gpu and gpu.torch_threads is None
    # the actors decode with DALI's GPU backend, in batches of the model's, cropped as the
    # model expects
    assert (gpu.dali.device, gpu.dali.batch_size) == ("mixed", 64)
    assert (gpu.dali.resize_size, gpu.dali.input_size) == (mc.resize_size, mc.input_size)
    assert gpu.decode.job.gpu_backend == "nvdec"
    on_cpu = ModelSpec.from_settings(mc, b"w", stamp, cfg, cfg.shares(),
                                     decode=DecodeSpec.from_settings(mc, cfg, "dali-cpu"))
    assert on_cpu.dali.device == "cpu"
    assert ModelSpec.from_settings(mc, b"w", stamp, cfg, cfg.shares(),
                                   decode=DecodeSpec.from_settings(mc, cfg)).dali is None


def test_an_actor_without_a_working_dali_decodes_shipped_videos_on_the_cpu(
        tiny_model, video_corpus, monkeypatch):
    """DALI that does not start in an actor (a broken install, no GPU visible) loses nothing:
    the shipped files are decoded by the CPU decoder at the indices the decode task chose,
    giving the CPU path's clips; a file neither reads gets the CPU decoder's error row."""
    from pipeline.decode_stage import DecodeSpec, decode_bounded
    from pipeline.decoders import dali as dali_mod
    from pipeline.fetch_decode import fetch_decode
    from pipeline.settings import LabelConfig
    from pipeline.store import store_for

    def no_dali(self, spec):
        raise ImportError("NVIDIA DALI is not usable: libnvimgcodec.so.0 not found")

    monkeypatch.setattr(dali_mod.DaliBatchDecoder, "__init__", no_dali)
    mc = tsm_model.load_config(tiny_model)
    cfg = LabelConfig(input="i", output="o", model="m", torch_threads=1)
    decode = DecodeSpec.from_settings(mc, cfg, "dali-cpu")
    spec = ModelSpec.from_settings(mc, (tiny_model / "model.safetensors").read_bytes(),
                                   RunStamp("tiny", "7", "r1", "uniform", 4), cfg,
                                   cfg.shares(), decode=decode)
    clf = ClipClassifier(spec)
    assert clf.dali is None and clf.fallback is not None
    vp9 = store_for(str(video_corpus["vp9"])).stat(str(video_corpus["vp9"]))
    shipped = fetch_decode(vp9, decode.job)
    assert shipped.encoded is not None
    junk = {**shipped.video, "decoder": "dali"}
    batch = results_table([
        ClipResult(vp9, encoded=shipped.encoded, video=shipped.video),
        decode_bounded(vp9, DecodeSpec.from_settings(mc, cfg)),  # the CPU path's clip
        ClipResult(ObjectInfo("junk.webm", 5, "j"), encoded=b"junk!", video=junk),
    ])
    rows_ = clf(batch).to_pylist()
    assert [r["decoder"] for r in rows_] == ["cpu_fallback", "cpu", "cpu_fallback"]
    assert [r["error_kind"] for r in rows_] == [None, None, "corrupt"]
    assert rows_[0]["top_k_ids"] == rows_[1]["top_k_ids"]
    np.testing.assert_allclose(rows_[0]["embedding"], rows_[1]["embedding"], rtol=1e-5,
                               atol=1e-6)
    clf.fallback.close()
