"""Planning a label run: resolve and check the model, open the input, check the output.

    plan = plan_label(config)   # reads only: nothing is started or written
    print(plan.describe())      # what `tsm label --dry-run` shows (reads the whole listing)
    summary = run_plan(plan)    # pipeline.job: the lease, Ray, the parts, the run record

Every problem with the settings, the model, the input or the output that can
be found before anything runs is found here and raised as a one-line
`LabelError`: a model whose weights do not load, an input that does not
exist or lists no video, an output that is a file. The inputs themselves
stream: the plan holds the listing's first chunk and the rest of it, lazily.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.contract import output_schema
from pipeline.errors import LabelError, one_line
from pipeline.keys import KeySet
from pipeline.listing import ListingStats, iter_inputs
from pipeline.settings import LabelConfig
from pipeline.source import FeedStats, todo
from pipeline.table import OutputTable


@dataclass
class LabelPlan:
    """What a run will do: the model, the output partition, the input stream (used once)."""

    config: LabelConfig
    model: Any  # registry.versions.ModelRef: the model's name, version and local files
    model_config: Any  # tsm_model.TSMConfig, with the run's num_segments
    table: OutputTable
    schema: pa.Schema
    listing: ListingStats
    network: Any  # the model itself, loaded once here (to check it, and to time it)
    # the DALI backend the model actors decode with ("nvdec" on GPUs, "dali-cpu" on CPUs),
    # None when the CPU decode tasks decode every video (`--decoder`, resolved)
    gpu_backend: str | None
    _chunks: Iterator[pa.Table]

    def inputs(self) -> Iterator[pa.Table]:
        """The listing's chunks (this plan's one pass over them)."""
        return self._chunks

    def done(self) -> KeySet:
        """The videos the output already holds a final verdict for, with these settings."""
        return self.table.done(self.config.sampling, self.model_config.num_segments)

    @property
    def decoder(self) -> str:
        """The run's decoder: "cpu", or "dali" (with the CPU decoder for what DALI cannot take)."""
        return "cpu" if self.gpu_backend is None else "dali"

    def describe(self) -> dict[str, object]:
        """The plan as plain values, counting the whole listing (what `--dry-run` prints)."""
        feed = FeedStats()
        to_label = sum(chunk.num_rows for chunk in todo(self.inputs(), self.done(), feed,
                                                        self.config.limit))
        mc = self.model_config
        return {
            "input": self.config.input,
            "input_kind": self.listing.kind,
            "videos_listed": self.listing.listed,
            "duplicates_dropped": self.listing.duplicates,
            "invalid_rows": self.listing.invalid_rows,
            "already_done": feed.skipped,
            "to_label": to_label,
            "output": self.table.partition,
            "model_uri": self.model.uri,
            "model_name": self.model.name,
            "model_version": self.model.version,
            "arch": mc.arch,
            "num_segments": mc.num_segments,
            "sampling": self.config.sampling,
            "decoder": self.decoder,
            "input_size": mc.input_size,
            "embedding_dim": self.schema.field("embedding").type.list_size,
        }


def _resolve_model(config: LabelConfig):
    """The model's files and config; its weights are loaded once here, so a bad file is
    one line now rather than a crashing actor later."""
    import tsm_model
    from registry.versions import ModelNotFoundError, resolve_model

    try:
        ref = resolve_model(config.model)
    except ModelNotFoundError as e:
        raise LabelError(str(e)) from None
    except Exception as e:
        raise LabelError(f"cannot resolve model {config.model}: {one_line(e)}") from None
    overrides = {} if config.num_segments is None else {"num_segments": config.num_segments}
    try:
        model = tsm_model.load(ref.path, **overrides)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        raise LabelError(f"model {config.model}: {one_line(e)}") from None
    return ref, model


def _check_gpus(config: LabelConfig) -> None:
    """A local Ray without GPUs would wait forever for GPU actors; say so instead (a
    cluster, `RAY_ADDRESS`, may add GPU nodes as the actors ask for them)."""
    import os

    import torch

    if config.gpus_per_actor > 0 and not os.environ.get("RAY_ADDRESS"):
        have = torch.cuda.device_count()
        if have < config.gpus_per_actor:
            raise LabelError(f"--gpus-per-actor {config.gpus_per_actor:g} but this machine "
                             f"has {have} GPUs")


def _gpu_backend(config: LabelConfig) -> str | None:
    """`--decoder` resolved: the DALI backend of the model actors, or None for CPU decoding.

    DALI must import here: the driver runs in the workers' image (a cluster's
    GPU image has the `gpu` extra), and a run asked to use it should fail now
    rather than in every actor.
    """
    from pipeline.decoders.dali import dali_import_error

    if config.decoder == "cpu":
        return None
    gpu = config.gpus_per_actor > 0
    problem = dali_import_error()
    if config.decoder == "auto":
        return "nvdec" if gpu and problem is None else None
    if problem is not None:
        raise LabelError(f"--decoder dali: {problem} (install the gpu extra: pip install "
                         "'.[gpu]', Linux x86-64 only)")
    # without GPUs, DALI's CPU backend (VP8, VP9 and MJPEG only): for checking the path
    return "nvdec" if gpu else "dali-cpu"


def plan_label(config: LabelConfig) -> LabelPlan:
    """Resolve the model, open the input, check the output; LabelError (one line) if any fails."""
    import tsm_model

    _check_gpus(config)
    gpu_backend = _gpu_backend(config)
    ref, model = _resolve_model(config)
    model_config = model.config
    stats = ListingStats()
    chunks = iter_inputs(config.input, stats, keep=config.keep_columns)
    try:  # the first chunk now: an input that does not exist or holds no video fails here
        first = next(chunks)
    except StopIteration:  # unreachable: an empty listing raises ListingError
        first = None
    table = OutputTable(config.output, ref.name, ref.version)
    table.check_root()
    schema = output_schema(tsm_model.FEATURE_DIMS[model_config.arch], config.embedding_dtype,
                           config.keep_columns)
    head = [first] if first is not None else []
    return LabelPlan(config, ref, model_config, table, schema, stats, model, gpu_backend,
                     itertools.chain(head, chunks))
