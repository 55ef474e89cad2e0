"""Running a label plan: decode on CPUs, label on model actors, write Parquet, record in MLflow.

    plan (pipeline.plan) -> Ray Data: [decode tasks] -> [model actor pool] -> driver: PartWriter

The driver consumes the stream with `iter_batches`, so the same loop writes
the part files, counts outcomes and reports progress, and resume is exact:
a video counts as done only once the part holding its row is committed.
Each run is an MLflow run whose id is written into every row.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import resume
from pipeline.contract import ErrorKind, RunStamp, Status, build_rows
from pipeline.decode_stage import DecodeSpec, decode_batch
from pipeline.errors import LabelError
from pipeline.model_stage import ClipClassifier, ModelSpec
from pipeline.plan import LabelPlan, plan_label
from pipeline.settings import LabelConfig
from pipeline.sink import PartWriter
from pipeline.stall import JobStalled, no_stall
from pipeline.store import ObjectInfo

MiB = 1024 * 1024


@dataclass
class Progress:
    """Where a running job stands (for a progress display)."""

    total: int  # videos to label in this run (after skipping done ones)
    skipped: int  # already labelled by an earlier run
    done: int = 0
    ok: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Videos per second since labelling started."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class LabelSummary:
    """What a run did, for the end-of-job screen and for MLflow."""

    input: str
    output: str
    model_uri: str
    model_name: str
    model_version: str
    run_id: str
    listed: int  # distinct input videos
    duplicates: int  # repeated URIs in the input, dropped
    invalid_rows: int  # manifest rows without a URI, dropped
    skipped: int  # done by an earlier run
    ok: int
    errors: dict[str, int]  # error_kind -> count
    wall_time_s: float
    parts: list[str]
    tracking_uri: str

    @property
    def processed(self) -> int:
        return self.ok + sum(self.errors.values())

    @property
    def videos_per_s(self) -> float:
        return self.processed / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def metrics(self) -> dict[str, float]:
        out = {
            "videos_listed": self.listed,
            "videos_ok": self.ok,
            "videos_error": sum(self.errors.values()),
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "wall_time_s": round(self.wall_time_s, 3),
            "videos_per_s": round(self.videos_per_s, 4),
            "parts_written": len(self.parts),
        }
        out.update({f"errors_{kind}": n for kind, n in sorted(self.errors.items())})
        return out


# ---------------------------------------------------------------------- Ray
def _init_ray() -> bool:
    """Join RAY_ADDRESS's cluster, or start a quiet local one; True if started here."""
    import ray

    if ray.is_initialized():
        return False
    # worker output (FFmpeg noise included) stays in Ray's log files, not the console
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    return True


def _quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job draws its own
    ctx.print_on_execution_start = False
    # Ray Data's advice (memory hints, "progress bars disabled") is for Ray's logs, not users
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _check_gpus(config: LabelConfig) -> None:
    """A local cluster without GPUs would wait forever for GPU actors; say so instead."""
    import ray

    if config.gpus_per_actor > 0 and not os.environ.get("RAY_ADDRESS"):
        have = ray.cluster_resources().get("GPU", 0)
        if have < config.gpus_per_actor:
            raise LabelError(
                f"--gpus-per-actor {config.gpus_per_actor:g} but this machine's Ray has "
                f"{have:g} GPUs"
            )


def decode_tasks(todo: list[ObjectInfo], spec: DecodeSpec, config: LabelConfig):
    """The CPU stage as a Dataset: one row per input, a uint8 clip or an error each."""
    import ray.data

    table = pa.table({
        "uri": pa.array([o.uri for o in todo], pa.string()),
        "version": pa.array([o.version for o in todo], pa.string()),
        "size": pa.array([o.size for o in todo], pa.int64()),
    })
    # one block per decode task: Ray Data runs a block's rows in one task, so
    # small blocks are what spreads decoding over all CPUs
    n = config.videos_per_decode_task
    ds = ray.data.from_arrow([table.slice(i, n) for i in range(0, table.num_rows, n)])
    return ds.map_batches(
        decode_batch,
        fn_kwargs={"spec": spec},
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=1,
        # a decode task holds a whole object (and decord copies it) plus frames;
        # declaring it also keeps Ray from fusing this stage into the model actors
        memory=512 * MiB + 3 * spec.stream_threshold_bytes,
    )


def model_actors(ds, spec: ModelSpec, config: LabelConfig):
    """The model actor pool over a Dataset of decoded clips; yields output tables."""
    import ray.data

    use_gpu = config.gpus_per_actor > 0
    cpus = config.cpus_per_actor if config.cpus_per_actor is not None else (1.0 if use_gpu else 0.0)
    return ds.map_batches(
        ClipClassifier,
        fn_constructor_kwargs={"spec": spec},
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=config.actors),
        num_cpus=cpus,
        num_gpus=config.gpus_per_actor if use_gpu else None,
    )


# ---------------------------------------------------------------------- MLflow
def _start_run(plan: LabelPlan):
    from registry.tracking import TrackedRun

    config, ref = plan.config, plan.model
    run = TrackedRun(config.experiment, f"label {ref.name} v{ref.version}",
                     tags={"output": config.output})
    run.log_params({
        "input": config.input,
        "output": config.output,
        "model_uri": ref.uri,
        "model_name": ref.name,
        "model_version": ref.version,
        "num_segments": plan.model_config.num_segments,
        "top_k": config.top_k,
        "embeddings": config.embeddings,
        "embedding_dtype": config.embedding_dtype,
        "batch_size": config.batch_size,
        "actors": config.actors,
        "gpus_per_actor": config.gpus_per_actor,
        "input_kind": plan.listing.kind,
        "inputs_listed": len(plan.listing.objects),
        "inputs_skipped": plan.skipped,
    })
    return run


# ---------------------------------------------------------------------- the job
def _stream(plan: LabelPlan, stamp: RunStamp, writer: PartWriter, progress: Progress,
            errors: Counter[str], on_progress: Callable[[Progress], None] | None) -> None:
    """Run the Ray Data stream and write every row it returns (and, never expected, the lost)."""
    import ray

    config = plan.config
    decode_spec = DecodeSpec.from_settings(plan.model_config, config)
    # the weights travel through Ray's object store, so actors on any node of a
    # cluster can load them (the path is only on this machine)
    weights = ray.put((Path(plan.model.path) / "model.safetensors").read_bytes())
    model_spec = ModelSpec.from_settings(plan.model_config, weights, stamp, config)
    ds = model_actors(decode_tasks(plan.todo, decode_spec, config), model_spec, config)
    expected = {o.uri: o.version for o in plan.todo}
    batches = ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
    for table in no_stall(batches, config.stall_timeout_s, "video finished"):
        table = _first_time_only(table, expected)
        _count(table, progress, errors)
        writer.write(table)
        if on_progress:
            on_progress(progress)
    if expected:  # never expected to happen: the stream lost rows
        lost = build_rows(plan.schema, stamp, video_uri=list(expected),
                          source_version=list(expected.values()),
                          error_kind=[ErrorKind.LOST] * len(expected),
                          error_message=["no result came back from the pipeline"] * len(expected))
        _count(lost, progress, errors)
        writer.write(lost)


def run_plan(
    plan: LabelPlan,
    *,
    on_start: Callable[[Progress], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> LabelSummary:
    """Label `plan.todo` into `plan.config.output`; returns the summary.

    A bad *video* never raises, it becomes an error row; JobStalled ends a
    run that stops making progress (its committed parts are kept).
    """
    started = time.monotonic()
    config = plan.config
    resume.clean_stale_staging(config.output)
    run = _start_run(plan)
    stamp = RunStamp(plan.model.name, plan.model.version, run.run_id)
    writer = PartWriter(config.output, plan.schema, run.run_id, config.sink)
    progress = Progress(total=len(plan.todo), skipped=plan.skipped)
    errors: Counter[str] = Counter()
    started_ray = False
    try:
        if on_start:
            on_start(progress)
        if plan.todo:
            started_ray = _init_ray()
            _quiet_ray_data()
            _check_gpus(config)
            _stream(plan, stamp, writer, progress, errors, on_progress)
        writer.close()
    except JobStalled as e:
        writer.abort()
        run.finish("FAILED")
        raise JobStalled(
            f"{e}: a model actor or decode task may be failing on every try (Ray's logs "
            f"say why); {len(writer.parts)} parts were committed, rerun to resume"
        ) from None
    except BaseException:
        writer.abort()
        run.finish("FAILED")
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    summary = LabelSummary(
        input=config.input,
        output=config.output,
        model_uri=plan.model.uri,
        model_name=plan.model.name,
        model_version=plan.model.version,
        run_id=run.run_id,
        listed=len(plan.listing.objects),
        duplicates=plan.listing.duplicates,
        invalid_rows=plan.listing.invalid_rows,
        skipped=plan.skipped,
        ok=progress.ok,
        errors=dict(errors),
        wall_time_s=time.monotonic() - started,
        parts=list(writer.parts),
        tracking_uri=run.tracking_uri,
    )
    run.log_metrics(summary.metrics())
    run.finish("FINISHED")
    return summary


def run_label(config: LabelConfig, **callbacks) -> LabelSummary:
    """Plan and run: label every video of `config.input` not yet in `config.output`."""
    return run_plan(plan_label(config), **callbacks)


def _first_time_only(table: pa.Table, expected: dict[str, str]) -> pa.Table:
    """Rows for videos still expected (each removed as it is seen): never a video twice."""
    uris = table["video_uri"].to_pylist()
    keep = [expected.pop(u, None) is not None for u in uris]
    return table if all(keep) else table.filter(pa.array(keep))


def _count(table: pa.Table, progress: Progress, errors: Counter[str]) -> None:
    ok = pc.equal(table["status"], Status.OK.value)
    n_ok = pc.sum(ok).as_py() or 0
    progress.ok += n_ok
    progress.errors += table.num_rows - n_ok
    progress.done += table.num_rows
    if table.num_rows > n_ok:
        kinds = table.filter(pc.invert(ok))["error_kind"].to_pylist()
        errors.update(k or "unknown" for k in kinds)
