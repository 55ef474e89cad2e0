"""The model stage of the label job: a Ray Data actor that loads TSM once and labels clips.

Input batches come from `pipeline.preprocess` (uint8 clips plus per-video
metadata, error rows included); output batches are Arrow tables in the final
Parquet schema (`pipeline.schema`). Error rows pass straight through. If the
model fails on a batch, each clip is retried alone, so one bad clip becomes
one error row and the rest of the batch is still labelled.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.schema import STATUS_ERROR, STATUS_OK, embedding_array, output_schema

MODEL_ERROR = "model_error"  # error_kind for a clip the model could not label


@dataclass(frozen=True)
class InferenceConfig:
    """What a model actor needs: where the model is, how to label, what to record."""

    model_path: str  # a saved model directory (used when model_files is None)
    model_name: str
    model_version: str
    run_id: str
    num_segments: int
    top_k: int = 5
    embeddings: bool = True
    embedding_dtype: str = "float32"
    use_gpu: bool = False
    bf16: bool = False  # autocast on GPU; ignored on CPU
    torch_threads: int | None = None  # intra-op threads on CPU; None = torch's default
    # the model's files ({name: bytes}, or a Ray ObjectRef to them): shipped through
    # Ray's object store so actors on other nodes need no access to the driver's disk
    model_files: Any = None


@dataclass
class Labels:
    """Model outputs for n clips (rows that failed have ok=False and a message)."""

    ok: np.ndarray  # (n,) bool
    messages: list[str | None]
    top_ids: np.ndarray  # (n, k) int32
    top_scores: np.ndarray  # (n, k) float32
    embeddings: np.ndarray | None  # (n, D) float32


class ClipClassifier:
    """Ray Data callable class: `__call__(batch) -> pa.Table` of output rows."""

    def __init__(self, config: InferenceConfig):
        import torch

        import tsm_model

        self.config = config
        if config.torch_threads and not config.use_gpu:
            torch.set_num_threads(config.torch_threads)
        self.device = torch.device("cuda" if config.use_gpu else "cpu")
        self.model = self._load(config, tsm_model)
        self.model.to(self.device)
        mc = self.model.config
        self.class_names = np.array(mc.class_names, dtype=object)
        self.k = min(config.top_k, mc.num_classes)
        self.mean, self.std = mc.mean, mc.std
        self.schema = output_schema(self.model.feature_dim, config.embedding_dtype)

    @staticmethod
    def _load(config: InferenceConfig, tsm_model):
        if config.model_files is None:
            return tsm_model.load(config.model_path, num_segments=config.num_segments)
        files = config.model_files
        if not isinstance(files, dict):  # an ObjectRef
            import ray

            files = ray.get(files)
        # tsm_model.load reads a directory; the weights live in memory once loaded
        directory = Path(tempfile.mkdtemp(prefix="tsm-model-"))
        try:
            for name, data in files.items():
                (directory / Path(name).name).write_bytes(data)
            return tsm_model.load(directory, num_segments=config.num_segments)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    # -------------------------------------------------------------- the forward pass
    def _forward(self, clips: np.ndarray):
        """uint8 (n, T, 3, S, S) -> (probabilities (n, C), embeddings (n, D)) as float32."""
        import torch

        from pipeline.transforms import normalize

        x = torch.from_numpy(clips).to(self.device, non_blocking=True)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.config.use_gpu and self.config.bf16
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            x = normalize(x, self.mean, self.std)
            # one backbone pass for both outputs: the same ops as TSM.forward and
            # TSM.features (per-frame features -> classifier -> consensus mean)
            frame_feats = self.model.frame_features(x)
            logits = self.model.new_fc(self.model.dropout(frame_feats)).mean(dim=1)
            probs = torch.softmax(logits.float(), dim=1)
            emb = frame_feats.float().mean(dim=1)
        return probs.cpu().numpy(), emb.cpu().numpy()

    def _label(self, clips: np.ndarray) -> Labels:
        n = len(clips)
        ok = np.ones(n, dtype=bool)
        messages: list[str | None] = [None] * n
        probs = np.zeros((n, len(self.class_names)), dtype=np.float32)
        emb = np.zeros((n, self.model.feature_dim), dtype=np.float32)
        try:
            probs[:], emb[:] = self._forward(clips)
        except Exception:
            # find the clip(s) at fault; the others still get labels
            for i in range(n):
                try:
                    probs[i : i + 1], emb[i : i + 1] = self._forward(clips[i : i + 1])
                except Exception as e:
                    ok[i] = False
                    messages[i] = f"model failed: {type(e).__name__}: {' '.join(str(e).split())}"
        finite = np.isfinite(probs).all(axis=1) & np.isfinite(emb).all(axis=1)
        for i in np.flatnonzero(ok & ~finite):
            ok[i] = False
            messages[i] = "model output is not finite (NaN or inf)"
        order = np.argsort(-probs, axis=1, kind="stable")[:, : self.k].astype(np.int32)
        scores = np.take_along_axis(probs, order, axis=1).astype(np.float32)
        return Labels(ok, messages, order, scores, emb if self.config.embeddings else None)

    # -------------------------------------------------------------- output rows
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["video_uri"])
        decoded = np.asarray(batch["ok"], dtype=bool)
        status_ok = decoded.copy()
        kinds = [str(k) or None for k in batch["error_kind"]]
        messages = [str(m) or None for m in batch["error_message"]]
        top_ids = np.zeros((n, self.k), dtype=np.int32)
        top_scores = np.zeros((n, self.k), dtype=np.float32)
        emb = np.zeros((n, self.model.feature_dim), dtype=np.float32)
        rows = np.flatnonzero(decoded)
        if len(rows):
            try:
                labels = self._label(np.ascontiguousarray(batch["clip"][rows]))
            except Exception as e:  # e.g. a clip of the wrong shape: the rows still get out
                labels = Labels(
                    np.zeros(len(rows), dtype=bool),
                    [f"model stage failed: {type(e).__name__}: {e}"] * len(rows),
                    top_ids[: len(rows)], top_scores[: len(rows)], None,
                )
            top_ids[rows], top_scores[rows] = labels.top_ids, labels.top_scores
            if labels.embeddings is not None:
                emb[rows] = labels.embeddings
            for j, i in enumerate(rows):
                if not labels.ok[j]:
                    status_ok[i] = False
                    kinds[i], messages[i] = MODEL_ERROR, labels.messages[j]
        return self._table(batch, status_ok, kinds, messages, top_ids, top_scores, emb)

    def _table(self, batch, status_ok, kinds, messages, top_ids, top_scores, emb) -> pa.Table:
        n, k = len(status_ok), self.k
        null = ~status_ok  # no predictions
        undecoded = ~np.asarray(batch["ok"], dtype=bool)  # no video metadata either

        def lists(values: np.ndarray, typ: pa.DataType, mask: np.ndarray) -> pa.Array:
            width = values.shape[1]
            offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
            flat = pa.array(values.reshape(-1), type=typ)
            return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(mask))

        labels_flat = self.class_names[top_ids.reshape(-1)] if k else np.array([], dtype=object)
        embedding = embedding_array(
            emb, status_ok & self.config.embeddings, self.schema.field("embedding").type
        )

        def meta(name: str, typ: pa.DataType, missing) -> pa.Array:
            values = np.asarray(batch[name])
            return pa.array(values, type=typ, mask=undecoded | (values == missing))

        fps = np.asarray(batch["fps"], dtype=np.float64)
        duration = np.asarray(batch["duration_s"], dtype=np.float64)
        now = datetime.now(UTC)
        cfg = self.config
        columns = {
            "video_uri": pa.array([str(u) for u in batch["video_uri"]], pa.string()),
            "source_version": pa.array([str(v) for v in batch["source_version"]], pa.string()),
            "status": pa.array([STATUS_OK if o else STATUS_ERROR for o in status_ok], pa.string()),
            "error_kind": pa.array(kinds, pa.string()),
            "error_message": pa.array(messages, pa.string()),
            "model_name": pa.array([cfg.model_name] * n, pa.string()),
            "model_version": pa.array([cfg.model_version] * n, pa.string()),
            "top_k_labels": lists(labels_flat.reshape(n, k), pa.string(), null),
            "top_k_scores": lists(top_scores, pa.float32(), null),
            "top_k_ids": lists(top_ids, pa.int32(), null),
            "embedding": embedding,
            "num_frames": meta("num_frames", pa.int64(), -1),
            "fps": pa.array(fps, pa.float64(), mask=undecoded | np.isnan(fps)),
            "duration_s": pa.array(duration, pa.float64(), mask=undecoded | np.isnan(duration)),
            "width": meta("width", pa.int32(), -1),
            "height": meta("height", pa.int32(), -1),
            "frame_indices": lists(
                np.asarray(batch["frame_indices"], dtype=np.int32), pa.int32(), undecoded
            ),
            "run_id": pa.array([cfg.run_id] * n, pa.string()),
            "processed_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
        return pa.Table.from_pydict(columns, schema=self.schema)
