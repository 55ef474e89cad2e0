"""The model stage of the label job: a Ray Data actor that loads TSM once and labels clips.

Input batches come from `pipeline.decode_stage` (uint8 clips plus what
decoding measured, error rows included); output batches are Arrow tables in
the final Parquet schema, made by `pipeline.contract.build_rows`. Error rows
pass straight through. If the model fails on a batch, each clip is retried
alone, so one bad clip becomes one error row and the rest of the batch is
still labelled.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.contract import (
    VIDEO_COLUMNS,
    ErrorKind,
    Predictions,
    RunStamp,
    build_rows,
    output_schema,
)
from pipeline.errors import one_line


@dataclass(frozen=True)
class ModelSpec:
    """What a model actor needs: the model, how to label, what every row records."""

    model_config: Any  # tsm_model.TSMConfig, with the run's num_segments
    # the weights (`model.safetensors` bytes, or a Ray ObjectRef to them): shipped through
    # Ray's object store so actors on other nodes need no access to the driver's disk
    weights: Any
    stamp: RunStamp
    top_k: int
    embeddings: bool
    embedding_dtype: str
    use_gpu: bool
    bf16: bool  # autocast on GPU; ignored on CPU
    torch_threads: int | None  # intra-op threads on CPU; None = torch's default
    tally: Any = None  # the run's pipeline.progress.Tally actor: each batch's outcome goes there
    kept: tuple[str, ...] = ()  # manifest columns carried into the rows

    @classmethod
    def from_settings(cls, model_config, weights, stamp: RunStamp, config, shares,
                      tally=None) -> ModelSpec:
        """From the model's config, its weights, the run's stamp, the job's `LabelConfig`
        and the model stage's share of the CPUs (`pipeline.balance.Shares`)."""
        return cls(model_config, weights, stamp, config.top_k, config.embeddings,
                   config.embedding_dtype, config.gpus_per_actor > 0, config.bf16,
                   shares.torch_threads, tally, config.keep_columns)


@dataclass
class _Labels:
    """Model outputs for n clips (rows that failed have ok=False and a message)."""

    ok: np.ndarray  # (n,) bool
    messages: list[str | None]
    top_ids: np.ndarray  # (n, k) int32
    top_scores: np.ndarray  # (n, k) float32
    embeddings: np.ndarray  # (n, D) float32


class ClipClassifier:
    """Ray Data callable class: `__call__(decoded batch) -> output rows` (a pa.Table)."""

    def __init__(self, spec: ModelSpec):
        import torch

        import tsm_model

        self.spec = spec
        if spec.torch_threads and not spec.use_gpu:
            torch.set_num_threads(spec.torch_threads)
        self.device = torch.device("cuda" if spec.use_gpu else "cpu")
        weights = spec.weights
        if not isinstance(weights, bytes | bytearray | memoryview):  # an ObjectRef
            import ray

            weights = ray.get(weights)
        self.model = tsm_model.from_bytes(spec.model_config, weights).to(self.device)
        config = self.model.config
        self.class_names = list(config.class_names)
        self.k = min(spec.top_k, config.num_classes)
        self.schema = output_schema(self.model.feature_dim, spec.embedding_dtype, spec.kept)
        if spec.tally is not None:
            spec.tally.actor_ready.remote()

    # -------------------------------------------------------------- the forward pass
    def _forward(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (n, T, 3, S, S) -> (probabilities (n, C), embeddings (n, D)) as float32."""
        import torch

        from pipeline.transforms import normalize

        config = self.model.config
        x = torch.from_numpy(clips).to(self.device, non_blocking=True)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.spec.use_gpu and self.spec.bf16
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            logits, emb = self.model.logits_and_features(normalize(x, config.mean, config.std))
            probs = torch.softmax(logits.float(), dim=1)
        return probs.cpu().numpy(), emb.float().cpu().numpy()

    def _label(self, clips: np.ndarray) -> _Labels:
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
                    messages[i] = f"model failed: {one_line(e, with_type=True)}"
        finite = np.isfinite(probs).all(axis=1) & np.isfinite(emb).all(axis=1)
        for i in np.flatnonzero(ok & ~finite):
            ok[i] = False
            messages[i] = "model output is not finite (NaN or inf)"
        order = np.argsort(-probs, axis=1, kind="stable")[:, : self.k].astype(np.int32)
        scores = np.take_along_axis(probs, order, axis=1).astype(np.float32)
        return _Labels(ok, messages, order, scores, emb)

    # -------------------------------------------------------------- output rows
    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        kinds: list[str | None] = batch["error_kind"].to_pylist()
        messages: list[str | None] = batch["error_message"].to_pylist()
        top_ids = np.zeros((n, self.k), dtype=np.int32)
        top_scores = np.zeros((n, self.k), dtype=np.float32)
        emb = np.zeros((n, self.model.feature_dim), dtype=np.float32)
        rows = np.flatnonzero(pc.is_null(batch["error_kind"]).to_numpy(zero_copy_only=False))
        if len(rows):
            clips = batch["clip"].combine_chunks().to_numpy()
            try:
                labels = self._label(np.ascontiguousarray(clips[rows]))
            except Exception as e:  # e.g. a clip of the wrong shape: the rows still get out
                message = f"model stage failed: {one_line(e, with_type=True)}"
                labels = _Labels(np.zeros(len(rows), dtype=bool), [message] * len(rows),
                                 top_ids[: len(rows)], top_scores[: len(rows)], emb[: len(rows)])
            top_ids[rows], top_scores[rows], emb[rows] = (
                labels.top_ids, labels.top_scores, labels.embeddings)
            for j, i in enumerate(rows):
                if not labels.ok[j]:
                    kinds[i], messages[i] = ErrorKind.MODEL_ERROR, labels.messages[j]
        if self.spec.tally is not None:  # for the driver's progress display and stall guard
            failed = Counter(k for k in kinds if k is not None)
            self.spec.tally.add.remote(n - sum(failed.values()), dict(failed))
        kept = {name: batch[name] for name in self.spec.kept}
        return build_rows(
            self.schema,
            self.spec.stamp,
            video_uri=batch["video_uri"].to_pylist(),
            source_version=batch["source_version"].to_pylist(),
            error_kind=kinds,
            error_message=messages,
            video={c.name: batch[c.name] for c in VIDEO_COLUMNS},
            predictions=Predictions(top_ids, top_scores, self.class_names,
                                    emb if self.spec.embeddings else None),
            kept=kept,
        )
