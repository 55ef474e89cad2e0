"""The model stage of the label job: a Ray Data actor that loads TSM once and labels clips.

Input batches come from `pipeline.decode_stage` (uint8 clips plus what
decoding measured, error rows included); output batches are Arrow tables in
the final Parquet schema, made by `pipeline.contract.build_rows`. Error rows
pass straight through. If the model fails on a batch, each clip is retried
alone, so one bad clip becomes one error row and the rest of the batch is
still labelled.

With DALI (`ModelSpec.dali`), the rows the decode tasks shipped encoded are
decoded here, on the actor's GPU, into the same tensor as the CPU-decoded
clips: the frames never leave the device. What DALI gives up on is decoded by
the CPU decoder in a child process (`pipeline.decoders.dali`); what neither
can read gets the CPU decoder's error row.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.contract import (
    VIDEO_COLUMNS,
    DecodedBy,
    ErrorKind,
    Predictions,
    RunStamp,
    build_rows,
    output_schema,
)
from pipeline.decode_stage import CLIP, ENCODED, DecodeSpec, read_clips
from pipeline.decoders.dali import CpuFallback, DaliSpec
from pipeline.errors import one_line

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# On CPU a forward pass over many clips at once is slower per clip than over a few: its
# activations (a ResNet-18's first block: 64 x 56 x 56 floats a frame) outgrow the caches.
# Measured on the 2-core dev VM, one thread, 8 x 224 px clips, CPU-s per clip at 1 / 4 / 32
# clips per pass: ResNet-18 0.18 / 0.23 / 0.29, MobileNetV2 0.17 / 0.30 / 0.40; a 32 px model
# is fastest at 32. So CPU passes take about this many pixels; GPUs take the whole batch.
CPU_PIXELS_PER_PASS = 8 * 224 * 224


# channels_last (NHWC) memory: cuDNN's fast convolution kernels (bf16 above all) want it, and
# so do oneDNN's on CPU for all but tiny frames. Measured on the dev VM, one thread, CPU-s
# per 8-frame clip, NCHW -> NHWC: ResNet-18 at 224 px 0.21 -> 0.16, at 112 px 0.059 -> 0.041;
# MobileNetV2 at 224 0.22 -> 0.18, at 112 0.025 -> 0.023; a 32-px ResNet-18 0.009 -> 0.012.
CPU_CHANNELS_LAST_FROM = 112  # px


def for_inference(model, *, use_gpu: bool):
    """The model in the memory layout its device runs fastest (in place; returns it)."""
    import torch

    if use_gpu or model.config.input_size >= CPU_CHANNELS_LAST_FROM:
        model = model.to(memory_format=torch.channels_last)
    return model


def clips_per_pass(config, *, use_gpu: bool, batch: int) -> int:
    """How many of a batch's clips go through the model in one forward pass."""
    if use_gpu:
        return batch
    per_clip = config.num_segments * config.input_size * config.input_size
    return max(1, min(batch, CPU_PIXELS_PER_PASS // per_clip))


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
    dali: DaliSpec | None = None  # decode the rows shipped encoded with DALI (None: none are)
    decode: DecodeSpec | None = None  # the decode tasks' limits, for the CPU fallback

    @classmethod
    def from_settings(cls, model_config, weights, stamp: RunStamp, config, shares,
                      tally=None, decode: DecodeSpec | None = None) -> ModelSpec:
        """From the model's config, its weights, the run's stamp, the job's `LabelConfig`,
        the model stage's share of the CPUs (`pipeline.balance.Shares`) and, if the actors
        decode with DALI, the decode tasks' spec (its `job.gpu_backend` says which DALI)."""
        dali = None
        if decode is not None and decode.job.gpu_backend is not None:
            device = "mixed" if decode.job.gpu_backend == "nvdec" else "cpu"
            dali = DaliSpec.from_model_config(model_config, device=device,
                                              batch_size=config.clips_per_batch)
        return cls(model_config, weights, stamp, config.top_k, config.embeddings,
                   config.embedding_dtype, config.gpus_per_actor > 0, config.bf16,
                   shares.torch_threads, tally, config.keep_columns, dali,
                   decode if dali is not None else None)


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
        self.model = for_inference(tsm_model.from_bytes(spec.model_config, weights)
                                   .to(self.device), use_gpu=spec.use_gpu)
        config = self.model.config
        self.clip_shape = (config.num_segments, 3, config.input_size, config.input_size)
        self.class_names = list(config.class_names)
        self.k = min(spec.top_k, config.num_classes)
        self.schema = output_schema(self.model.feature_dim, spec.embedding_dtype, spec.kept)
        self.dali = self.fallback = None
        if spec.dali is not None:
            self._start_decoders(spec)
        if spec.tally is not None:
            spec.tally.actor_ready.remote()

    def _start_decoders(self, spec: ModelSpec) -> None:
        """DALI, and the CPU decoder for what it gives up on. An actor where DALI does not
        start (a broken install, no GPU visible) decodes every shipped video on the CPU
        (decoder `cpu_fallback`), so nothing is lost; the log says why."""
        from pipeline.decoders.dali import DaliBatchDecoder

        decode = spec.decode
        self.fallback = CpuFallback(spec.dali.resize_size, spec.dali.input_size,
                                    timeout_s=decode.timeout_s,
                                    max_pixels=decode.job.max_frame_pixels,
                                    memory_limit=decode.memory_bytes)
        try:
            self.dali = DaliBatchDecoder(spec.dali)
        except Exception as e:
            log.warning("DALI did not start, decoding on the CPU instead: %s", one_line(e))

    # -------------------------------------------------------------- the forward pass
    def _to_device(self, clips: np.ndarray) -> torch.Tensor:
        """uint8 clips from the decode tasks -> a tensor on the model's device (through pinned
        memory, asynchronously, on a GPU)."""
        import torch

        x = torch.from_numpy(clips)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x

    def _forward(self, clips: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (n, T, 3, S, S) on the device -> (probabilities (n, C), embeddings (n, D))
        as float32."""
        import torch

        from pipeline.transforms import normalize

        config = self.model.config
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.spec.use_gpu and self.spec.bf16
            else contextlib.nullcontext()
        )
        step = clips_per_pass(config, use_gpu=self.spec.use_gpu, batch=len(clips))
        probs, embs = [], []
        with torch.inference_mode(), autocast:
            for start in range(0, len(clips), step):
                logits, emb = self.model.logits_and_features(
                    normalize(clips[start:start + step], config.mean, config.std))
                probs.append(torch.softmax(logits.float(), dim=1).cpu())
                embs.append(emb.float().cpu())
        return torch.cat(probs).numpy(), torch.cat(embs).numpy()

    def _label(self, clips: torch.Tensor) -> _Labels:
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

    # -------------------------------------------------------------- the clips
    def _decode_shipped(self, batch: pa.Table, rows: np.ndarray, verdicts: _Verdicts):
        """The shipped rows decoded (DALI, else the CPU fallback): (the rows that got a
        clip, their clips on the device); the others get their error in `verdicts`."""
        import torch

        from pipeline.decoders import DecodeError
        from pipeline.decoders.dali import EncodedClip, decode_with_fallback

        encoded = batch[ENCODED].take(pa.array(rows)).to_pylist()
        indices = batch["frame_indices"].take(pa.array(rows)).to_pylist()
        items = [EncodedClip(data, idx) for data, idx in zip(encoded, indices, strict=True)]
        if self.dali is not None:
            out = decode_with_fallback(self.dali, items, self.fallback)
            clips, decoders, errors = out.clips, out.decoders, out.errors
        else:  # DALI did not start in this actor
            clips = torch.zeros((len(items), *self.clip_shape), dtype=torch.uint8)
            decoders, errors = [DecodedBy.CPU_FALLBACK] * len(items), [None] * len(items)
            for j, item in enumerate(items):
                try:
                    clips[j] = torch.from_numpy(self.fallback.decode(item.data, item.indices))
                except DecodeError as e:
                    errors[j] = (e.kind, e.message)
            clips = clips.to(self.device)
        good = []
        for j, i in enumerate(rows):
            verdicts.decoders[i] = str(decoders[j])
            if errors[j] is None:
                good.append(j)
            else:
                verdicts.fail(i, *errors[j])
        return rows[good], clips[good]

    def _clips(self, batch: pa.Table, todo: np.ndarray, verdicts: _Verdicts):
        """(rows, uint8 clips on the device) for the rows in `todo`: the decode tasks' clips,
        and the shipped files decoded here."""
        import torch

        cpu_rows, cpu_clips = read_clips(batch[CLIP], self.clip_shape)
        keep = np.isin(cpu_rows, todo)
        cpu_rows, x = cpu_rows[keep], self._to_device(cpu_clips[keep])  # a copy: writable
        shipped = np.intersect1d(
            np.flatnonzero(batch[ENCODED].is_valid().to_numpy(zero_copy_only=False)), todo)
        for i in np.setdiff1d(todo, np.concatenate([cpu_rows, shipped])):  # never expected
            verdicts.fail(int(i), ErrorKind.INTERNAL, "neither a clip nor a file reached the "
                                                      "model stage")
        if not len(shipped):
            return cpu_rows, x
        gpu_rows, gpu_clips = self._decode_shipped(batch, shipped, verdicts)
        rows = np.concatenate([cpu_rows, gpu_rows])
        return rows, torch.cat([x, gpu_clips.to(self.device)])

    # -------------------------------------------------------------- output rows
    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        verdicts = _Verdicts(batch)
        top_ids = np.zeros((n, self.k), dtype=np.int32)
        top_scores = np.zeros((n, self.k), dtype=np.float32)
        emb = np.zeros((n, self.model.feature_dim), dtype=np.float32)
        todo = verdicts.todo()
        if len(todo):
            try:
                rows, clips = self._clips(batch, todo, verdicts)
                labels = self._label(clips)
            except Exception as e:  # e.g. a clip of the wrong size: the rows still get out
                rows = verdicts.todo()
                message = f"model stage failed: {one_line(e, with_type=True)}"
                labels = _Labels(np.zeros(len(rows), dtype=bool), [message] * len(rows),
                                 top_ids[: len(rows)], top_scores[: len(rows)],
                                 emb[: len(rows)])
            top_ids[rows], top_scores[rows], emb[rows] = (
                labels.top_ids, labels.top_scores, labels.embeddings)
            for j, i in enumerate(rows):
                if not labels.ok[j]:
                    verdicts.fail(i, ErrorKind.MODEL_ERROR, labels.messages[j])
        kinds = verdicts.kinds
        if self.spec.tally is not None:  # for the driver's progress display and stall guard
            failed = Counter(k for k in kinds if k is not None)
            self.spec.tally.add.remote(n - sum(failed.values()), dict(failed))
        kept = {name: batch[name] for name in self.spec.kept}
        video = {c.name: batch[c.name] for c in VIDEO_COLUMNS}
        video["decoder"] = pa.array(verdicts.decoders, pa.string())
        return build_rows(
            self.schema,
            self.spec.stamp,
            video_uri=batch["video_uri"].to_pylist(),
            source_version=batch["source_version"].to_pylist(),
            error_kind=kinds,
            error_message=verdicts.messages,
            video=video,
            predictions=Predictions(top_ids, top_scores, self.class_names,
                                    emb if self.spec.embeddings else None),
            kept=kept,
        )


class _Verdicts:
    """Each row's error kind and message, and what decoded it, as the actor learns them."""

    def __init__(self, batch: pa.Table):
        self.kinds: list[str | None] = batch["error_kind"].to_pylist()
        self.messages: list[str | None] = batch["error_message"].to_pylist()
        self.decoders: list[str | None] = batch["decoder"].to_pylist()

    def todo(self) -> np.ndarray:
        """Rows without an error (yet)."""
        return np.asarray([i for i, k in enumerate(self.kinds) if k is None], dtype=np.int64)

    def fail(self, row: int, kind: ErrorKind | str, message: str | None) -> None:
        self.kinds[row], self.messages[row] = str(kind), message
