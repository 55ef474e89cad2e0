"""Running a label plan: decode on CPUs, label on model actors, write Parquet on the workers.

    lease on OUT -> listing (driver thread, in chunks, minus what is done)
      -> Ray Data: [read tasks] -> [decode tasks] -> [model actor pool] -> [part writers]
      -> driver: counts and part names -> OUT/<model>/<version>/_runs/<run id>.json

The driver never holds the input list or a single output row: it lists,
filters and counts. Rows are written by the workers in parts published
whole, so resume is exact (a video is done once a committed part holds its
final verdict), and a run that finishes writes its record last. Each run is
an MLflow run whose id is written into every row.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.balance import Costs, Shares, measure, share
from pipeline.contract import RunStamp
from pipeline.decode_stage import DecodeSpec, decode_batch
from pipeline.lease import GRACE_S, LeaseLost
from pipeline.model_stage import ClipClassifier, ModelSpec
from pipeline.plan import LabelPlan, plan_label
from pipeline.progress import Progress, new_tally, on_this_node
from pipeline.ray_session import init_ray, stop_ray, while_ray_starts
from pipeline.settings import LabelConfig
from pipeline.sink import PartSpec, write_part
from pipeline.source import Feed, FeedDatasource, FeedStats, todo
from pipeline.stall import JobStalled, StallWatch, drain
from pipeline.store import ObjectInfo

MiB = 1024 * 1024
READERS = 2  # read tasks pulling listing chunks (they only cut chunks into blocks)
WRITERS = 4  # part-writing tasks at once
COST = ("frames_decoded", "frames_used", "bytes_read", "read_retries", "decode_cpu_s")


def feed_block_bytes(cpus: float) -> int:
    """The job's target block size, from the CPUs of the cluster.

    Ray Data joins what a read task yields into blocks of up to DataContext.
    target_max_block_size (128 MiB by default: the whole listing, handed on at its end, as
    one decode task). A listing row is ~100-200 bytes, and each block is one decode task:
    small blocks spread a small run over every CPU, but every block costs the driver (Ray
    Data's executor) the same work, so a big cluster needs big blocks for its driver to
    keep up (one input per block cost 4x the driver CPU of ~100, docs/scale.md). So: ~12
    inputs a block up to 8 CPUs, growing with the cluster to ~100 from 64 CPUs. The later
    stages inherit the target: their blocks are about one clip or row each.
    """
    return int(min(16 * 1024, max(2 * 1024, 256 * cpus)))


def blocks_ahead(spec: DecodeSpec, videos_per_task: int) -> int:
    """How many output blocks a task may hold that the driver has not taken yet (Ray Data's
    `_max_num_blocks_in_streaming_gen_buffer`; its default is 2).

    A decode task hands on one block per video. With 2, it stopped after two until the
    driver's executor loop took them, so on a busy machine decoding waited on the driver
    being scheduled: on 2 cores, 120 upload-like clips took ~2.5 s longer (docs/
    performance.md). Two batches of clips may wait instead: a few MB (8 x 3 x 224 x 224
    bytes a clip). Files shipped whole to the GPU decoders (up to 64 MB each) keep Ray's
    default.
    """
    return 2 if spec.job.gpu_backend else 2 * videos_per_task


class RowsLost(RuntimeError):
    """Fewer rows came back than videos went in (never expected: Ray Data maps one to one)."""


class ErrorRateExceeded(RuntimeError):
    """More videos than --max-error-rate allows got error rows (their parts are kept)."""


@dataclass(frozen=True)
class LabelSummary:
    """What a run did, for the end-of-job screen, the run record and MLflow."""

    input: str
    output: str  # the partition the rows went to
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
    cost: dict[str, float]  # decoding totals: frames_decoded, frames_used, bytes_read, ...
    decoders: dict[str, int]  # decoded videos by what decoded them (cpu, dali, cpu_fallback)

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
        out.update({f"decoded_by_{name}": n for name, n in sorted(self.decoders.items())})
        videos = max(self.processed, 1)
        out.update({
            "frames_decoded_per_used": round(
                self.cost.get("frames_decoded", 0) / max(self.cost.get("frames_used", 0), 1), 3),
            "decode_cpu_s_per_video": round(self.cost.get("decode_cpu_s", 0) / videos, 4),
            "bytes_read_per_video": round(self.cost.get("bytes_read", 0) / videos),
            "read_retries": self.cost.get("read_retries", 0),
        })
        return out


# ---------------------------------------------------------------------- Ray
def _quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job draws its own
    ctx.print_on_execution_start = False
    # Ray Data's advice (memory hints, "progress bars disabled") is for Ray's logs, not users
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def stop_execution(ds) -> None:
    """Shut down a dataset's streaming execution now: its tasks, and its actors with the CPUs
    and GPUs they hold.

    Ray Data does this when the execution runs out, when its iterator is
    closed, or when the Dataset is garbage-collected. A run that fails midway
    (a listing error, a lost lease, a stall) can wait for none of them: the
    thread that holds the iterator may be blocked for ever on output that will
    not come, and on a shared Ray (a cluster, a notebook, a second run in the
    same process) the stream's actors would keep their resources from the next
    run, which then waits for ever (found by tests/pipeline/test_job.py). Ray
    Data has no public call for this; its executor is the thread named after
    the dataset, and its `shutdown(force=True)` kills the actors
    (ray-project/ray#51769).
    """
    import threading

    prefix = "StreamingExecutor-" + ds.get_dataset_id().rsplit("_", 1)[0] + "_"
    for thread in threading.enumerate():
        if thread.name.startswith(prefix) and callable(getattr(thread, "shutdown", None)):
            thread.shutdown(force=True)


def decode_tasks(ds, spec: DecodeSpec, videos_per_task: int):
    """The CPU stage: one row per input, a uint8 clip or an error each. A task decodes one
    block of the feed (~100 inputs) `videos_per_task` at a time, handing their clips on as
    it goes, so it never holds more than that many."""
    return ds.map_batches(
        decode_batch,
        fn_kwargs={"spec": spec},
        batch_size=videos_per_task,
        batch_format="pyarrow",
        num_cpus=1,
        # what the decoding child may use at most (its cap) plus the frames in the task;
        # declaring it also keeps Ray from fusing this stage into the model actors
        memory=spec.memory_bytes,
    )


def model_actors(ds, spec: ModelSpec, config: LabelConfig, shares: Shares):
    """The model actor pool over decoded clips; yields output rows."""
    import ray.data

    return ds.map_batches(
        ClipClassifier,
        fn_constructor_kwargs={"spec": spec},
        batch_size=config.clips_per_batch,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=shares.actors),
        num_cpus=shares.cpus_per_actor,
        num_gpus=config.gpus_per_actor if config.gpus_per_actor > 0 else None,
    )


def part_writers(ds, spec: PartSpec, rows_per_part: int):
    """Write tasks: one Parquet part per `rows_per_part` rows; yields one summary row each.

    They reserve no CPU: writing a part is brief I/O, and a reservation would make
    them wait behind the decode tasks, which hold every CPU until the input runs out
    (so rows would pile up and no part be committed until the end).
    """
    return ds.map_batches(write_part, fn_kwargs={"spec": spec}, batch_size=rows_per_part,
                          batch_format="pyarrow", num_cpus=0, concurrency=WRITERS)


# ---------------------------------------------------------------------- MLflow
def _fail_dead_runs(config: LabelConfig) -> None:
    """MLflow runs of earlier jobs on this output still marked RUNNING were killed: the lease
    is ours, so none of them is alive. Mark them FAILED."""
    from registry.tracking import client, experiment_id

    c = client()
    quoted = config.output.replace("'", "\\'")
    runs = c.search_runs([experiment_id(config.experiment)],
                         f"tags.output = '{quoted}' and attributes.status = 'RUNNING'")
    for run in runs:
        c.set_terminated(run.info.run_id, "FAILED")


def _start_run(plan: LabelPlan):
    from registry.tracking import TrackedRun

    config, ref = plan.config, plan.model
    run = TrackedRun(config.experiment, f"label {ref.name} v{ref.version}",
                     tags={"output": config.output, "partition": plan.table.partition})
    run.log_params({
        "input": config.input,
        "output": config.output,
        "model_uri": ref.uri,
        "model_name": ref.name,
        "model_version": ref.version,
        "num_segments": plan.model_config.num_segments,
        "sampling": config.sampling,
        "decoder": plan.decoder,
        "gpu_backend": plan.gpu_backend or "",
        "max_frame_pixels": config.max_frame_pixels,
        "top_k": config.top_k,
        "embeddings": config.embeddings,
        "embedding_dtype": config.embedding_dtype,
        "batch_size": config.clips_per_batch,
        "gpus_per_actor": config.gpus_per_actor,
        "input_kind": plan.listing.kind,
    })
    return run


# ---------------------------------------------------------------------- the job
def decode_spec_of(plan: LabelPlan) -> DecodeSpec:
    return DecodeSpec.from_settings(plan.model_config, plan.config, plan.gpu_backend)


def _measure(plan: LabelPlan, first) -> Costs | None:
    """What decoding two of the first videos and the model cost here, for a balanced run
    (None when the flags set the split)."""
    if not plan.config.balanced:
        return None
    sample = [ObjectInfo(r["uri"], r["size"], r["version"]) for r in first.to_pylist()
              if r["error_kind"] is None][:2]
    return measure(plan.network, sample, decode_spec_of(plan),
                   batch=plan.config.clips_per_batch)


def _start_tracking(plan: LabelPlan):
    """Close the MLflow runs of dead earlier jobs on this output, then open this run's."""
    _fail_dead_runs(plan.config)
    return _start_run(plan)


class _Run:
    """The moving parts of one run, and the driver's bookkeeping."""

    def __init__(self, plan: LabelPlan, run_id: str, lease_id: str, progress: Progress,
                 feed_stats: FeedStats):
        self.plan, self.run_id, self.lease_id, self.progress = plan, run_id, lease_id, progress
        self.feed_stats = feed_stats
        self.parts: list[str] = []
        self.errors: Counter[str] = Counter()
        self.decoders: Counter[str] = Counter()  # rows by what decoded them
        self.ok = 0
        self.cost: Counter[str] = Counter()
        self.feed: Feed | None = None
        self.tally = None
        self.ds = None  # the Ray Data stream, once built

    def stream(self, first, pending, lease, run, on_progress, costs: Costs | None) -> None:
        """Run the Ray Data stream over the listing's chunks still to label: `first`, then
        `pending`. `costs`: the stages' costs, measured (a balanced run), else None."""
        import ray
        import ray.data

        plan, config, progress = self.plan, self.plan.config, self.progress
        decode_spec = decode_spec_of(plan)
        shares = self._shares(costs)
        run.log_params({"actors": shares.actors, "cpus_per_actor": shares.cpus_per_actor,
                        "torch_threads": shares.torch_threads,
                        "balanced": config.balanced})
        progress.actors = shares.actors
        stamp = RunStamp(plan.model.name, plan.model.version, self.run_id, config.sampling,
                         plan.model_config.num_segments)
        # the weights travel through Ray's object store, so actors on any node of a
        # cluster can load them (the path is only on this machine)
        weights = ray.put((Path(plan.model.path) / "model.safetensors").read_bytes())
        self.tally = new_tally()
        model_spec = ModelSpec.from_settings(plan.model_config, weights, stamp, config, shares,
                                             self.tally, decode_spec)
        part_spec = PartSpec(config.output, plan.table.partition, self.run_id, self.lease_id,
                             plan.schema, config.sink.row_group_rows, config.sink.compression)
        emb = plan.schema.field("embedding").type
        rows_per_part = config.sink.rows_per_part(emb.list_size * emb.value_type.bit_width // 8)
        self.feed = Feed(itertools.chain([first], pending), self.feed_stats, READERS).start()
        # the read tasks only wait on the feed's queue and cut its chunks: no CPU reserved
        # (decoding starts while the listing goes on), on the driver's node (a lost worker
        # never takes a read, which could not be run again: the queue gives out each chunk
        # once)
        source = ray.data.read_datasource(
            FeedDatasource(self.feed, config.videos_per_decode_task),
            override_num_blocks=READERS, num_cpus=0,
            ray_remote_args={"scheduling_strategy": on_this_node()})
        # the stages after the read inherit its context
        source.context.target_max_block_size = feed_block_bytes(
            ray.cluster_resources().get("CPU", 1))
        # a model actor lost with its node while it loads the model (pre-empted GPU nodes) is
        # replaced rather than ending the run (Ray Data's default: the first such death ends
        # it); a model that cannot load at all still ends it after these tries
        source.context.max_consecutive_actor_init_deaths = 3 * shares.actors
        source.context._max_num_blocks_in_streaming_gen_buffer = blocks_ahead(
            decode_spec, config.videos_per_decode_task)
        self.ds = ds = part_writers(
            model_actors(decode_tasks(source, decode_spec, config.videos_per_decode_task),
                         model_spec, config, shares),
            part_spec, rows_per_part)
        progress.phase = "loading the model"
        watch = StallWatch(config.stall_timeout_s, "video finished")

        def tick() -> None:
            self._read_tally()
            watch.observe((progress.done, progress.written, progress.actors_ready))
            watch.check()
            lease.check()
            self.feed.check()
            if on_progress:
                on_progress(progress)

        batches = ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
        for summary in drain(batches, tick):
            for row in summary.to_pylist():
                if not row["part"]:  # fenced off: this run no longer holds the output
                    lease.check()
                    raise LeaseLost(f"the lease on {config.output} is no longer this run's")
                self.parts.append(plan.table.store.join(plan.table.partition, row["part"]))
                self.ok += row["ok"]
                self.errors.update(json.loads(row["errors"]))
                self.decoders.update(json.loads(row["decoders"]))
                self.cost.update({k: row[k] for k in COST})
                progress.written += row["rows"]
        self.feed.check()
        self._read_tally()
        queued = self.feed_stats.queued
        if progress.written < queued:
            raise RowsLost(f"{queued - progress.written} of {queued} videos came back from the "
                           "pipeline without a row; rerun to label them")

    def _shares(self, costs: Costs | None) -> Shares:
        """The flags' split, or one from the measured costs (balance.py)."""
        import ray

        config = self.plan.config
        if costs is None:
            return config.shares()
        resources = ray.cluster_resources()
        node_cpus = [n["Resources"]["CPU"] for n in ray.nodes()
                     if n["Alive"] and n["Resources"].get("CPU")]
        return share(resources.get("CPU", 1), costs, node_cpus=max(node_cpus, default=None),
                     nodes=len(node_cpus), gpus=resources.get("GPU", 0),
                     gpus_per_actor=config.gpus_per_actor)

    def _read_tally(self) -> None:
        import ray

        p = self.progress
        p.listed, p.skipped = self.plan.listing.listed, self.feed_stats.skipped
        p.listing_done = self.feed_stats.finished
        if self.tally is None:
            return
        try:
            ready, ok, errors = ray.get(self.tally.read.remote(), timeout=5)
        except ray.exceptions.GetTimeoutError:
            return  # a busy head node: next tick
        p.actors_ready, p.ok, p.errors = ready, ok, sum(errors.values())
        p.done = p.ok + p.errors
        if ready and p.phase == "loading the model":
            p.phase = "labelling"

    def close(self) -> None:
        """Stop what still runs: the stream (a no-op once it ran out), then the listing feed."""
        if self.ds is not None:
            stop_execution(self.ds)
        if self.feed is not None:
            self.feed.stop()


def run_plan(
    plan: LabelPlan,
    *,
    ray_started: bool = False,
    on_start: Callable[[Progress], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> LabelSummary:
    """Label the plan's inputs into its output partition; returns the summary.

    Ray is joined or started once there is something to label, unless the caller
    already did (`ray_started`: it started it for this run, and the run stops it).

    A bad *video* never raises, it becomes an error row. OutputBusy (another
    run holds the output), JobStalled (no progress for the stall limit) and
    LeaseLost end the run; its committed parts are kept, and a rerun resumes.
    """
    import uuid

    started = time.monotonic()
    config, table = plan.config, plan.table
    progress = Progress(phase="waiting for the output")
    if on_start:
        on_start(progress)

    def enter(phase: str) -> None:  # shown at once: some phases take a while
        progress.phase = phase
        if on_progress:
            on_progress(progress)

    lease = run = None
    job: _Run | None = None
    started_ray = ray_started  # whatever ends the run (OutputBusy included) stops it
    try:
        lease = table.store.lease(config.output, f"lease-{uuid.uuid4().hex[:12]}").acquire()
        if lease.taken_from_dead:  # let the dead run's workers stop (pipeline.lease.GRACE_S)
            enter("waiting for a dead run's workers")
            time.sleep(GRACE_S)
        enter("reading the output")
        table.check_schema(plan.schema)
        table.clean_staging()
        feed_stats = FeedStats()
        pending = todo(plan.inputs(), plan.done(), feed_stats, config.limit)
        enter("listing")
        first = next(pending, None)  # nothing left to label: no actors (nor Ray, unless
        # the caller started it beside the plan)
        costs = None
        if first is None:
            run = _start_tracking(plan)
            feed_stats.finished = True
        else:
            # Ray's start (unless the caller started it beside the plan) is mostly waiting
            # for its processes: the MLflow run and the stages' measurement go on meanwhile
            enter("starting Ray")
            with ThreadPoolExecutor(2, thread_name_prefix="tsm-start") as pool:
                tracking = pool.submit(_start_tracking, plan)
                measured = pool.submit(_measure, plan, first)
                try:
                    started_ray = init_ray() or started_ray
                finally:
                    run = tracking.result()
                costs = measured.result()
            _quiet_ray_data()
        job = _Run(plan, run.run_id, lease.run_id, progress, feed_stats)
        if first is not None:
            job.stream(first, pending, lease, run, on_progress, costs)
        enter("finishing")
        summary = LabelSummary(
            input=config.input, output=table.partition, model_uri=plan.model.uri,
            model_name=plan.model.name, model_version=plan.model.version, run_id=run.run_id,
            listed=plan.listing.listed, duplicates=plan.listing.duplicates,
            invalid_rows=plan.listing.invalid_rows, skipped=feed_stats.skipped,
            ok=job.ok, errors=dict(job.errors), wall_time_s=time.monotonic() - started,
            parts=list(job.parts), tracking_uri=run.tracking_uri, cost=dict(job.cost),
            decoders=dict(job.decoders),
        )
        run.log_metrics(summary.metrics())
        _check_error_rate(config, summary)
        _record(plan, summary)
        run.finish("FINISHED")
        return summary
    except JobStalled as e:
        if run is not None:
            run.finish("FAILED")
        parts = len(job.parts) if job else 0
        raise JobStalled(
            f"{e}: a model actor or decode task may be failing on every try (Ray's logs "
            f"say why); {parts} parts were committed, rerun to resume") from None
    except BaseException:
        if run is not None:
            run.finish("FAILED")
        raise
    finally:
        if job is not None:
            job.close()
        if started_ray:
            stop_ray()
        if lease is not None:
            lease.release()


def _check_error_rate(config: LabelConfig, summary: LabelSummary) -> None:
    """Fail a run whose share of error rows is over the limit: no record marks it finished."""
    errors = sum(summary.errors.values())
    if config.max_error_rate is None or not summary.processed:
        return
    rate = errors / summary.processed
    if rate > config.max_error_rate:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(summary.errors.items()))
        raise ErrorRateExceeded(
            f"{errors} of {summary.processed} videos ({rate:.1%}) got error rows ({kinds}), "
            f"over --max-error-rate {config.max_error_rate:g}; their rows are kept, the run "
            "is not marked finished")


def _record(plan: LabelPlan, summary: LabelSummary) -> None:
    """The run's record, written last: the marker downstream jobs wait for."""
    config = plan.config
    plan.table.write_run(summary.run_id, {
        "run_id": summary.run_id,
        "finished_at": datetime.now(UTC).isoformat(),
        "input": config.input,
        "model": {"uri": summary.model_uri, "name": summary.model_name,
                  "version": summary.model_version, "arch": plan.model_config.arch},
        "settings": {"sampling": config.sampling,
                     "num_segments": plan.model_config.num_segments,
                     "top_k": config.top_k, "embeddings": config.embeddings,
                     "embedding_dtype": config.embedding_dtype},
        "counts": {"listed": summary.listed, "skipped": summary.skipped, "ok": summary.ok,
                   "errors": summary.errors, "duplicates": summary.duplicates,
                   "invalid_rows": summary.invalid_rows},
        "parts": [p.rsplit("/", 1)[-1] for p in summary.parts],
        "cost": summary.cost,
        "wall_time_s": round(summary.wall_time_s, 3),
    })


def run_label(config: LabelConfig, **callbacks) -> LabelSummary:
    """Plan and run: label every video of `config.input` not yet done in `config.output`.
    Ray starts while the plan is made (`while_ray_starts`)."""
    plan, started = while_ray_starts(lambda: plan_label(config))
    return run_plan(plan, ray_started=started, **callbacks)
