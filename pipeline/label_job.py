"""The label job: list, skip what is done, decode on CPUs, label on model actors, write Parquet.

    listing -> resume filter -> Ray Data: [decode tasks] -> [model actor pool] -> driver: PartWriter

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
from pipeline.inference import ClipClassifier, InferenceConfig
from pipeline.listing import Listing, ListingError, list_inputs
from pipeline.preprocess import PreprocessConfig, preprocess_batch
from pipeline.schema import STATUS_OK, error_rows, output_schema
from pipeline.sink import PartWriter, SinkConfig
from pipeline.stall import JobStalled, no_stall
from pipeline.storage import ObjectInfo

EXPERIMENT = "tsm-label"
LOST = "lost"  # error_kind for a video the stream never returned (a safety net)
MiB = 1024 * 1024
MAX_DECODE_TIMEOUT_S = 24 * 3600
MAX_STALL_TIMEOUT_S = 7 * 24 * 3600
MAX_STREAM_THRESHOLD_MB = 1024


class LabelError(RuntimeError):
    """A problem with the job's inputs or settings, explained in one line."""


@dataclass(frozen=True)
class LabelConfig:
    """Everything a label run needs; the CLI flags map one to one onto these fields."""

    input: str
    output: str
    model: str
    segments: int | None = None  # None: the model's own num_segments
    top_k: int = 5
    embeddings: bool = True
    embedding_dtype: str = "float32"
    batch_size: int = 32  # clips per model forward
    actors: int = 1  # model actors
    gpus_per_actor: float = 0.0
    # CPU Ray reserves per model actor; None: 1 with GPUs, else 0. Without GPUs
    # the model shares the cores with decoding: a reserved core would sit idle
    # whenever the model waits for clips (and Ray would run fewer decode tasks)
    cpus_per_actor: float | None = None
    torch_threads: int | None = None  # None: 1 per actor on CPU
    decode_timeout_s: float = 120.0
    # end the job if no video comes out for this long (an actor crashing on every
    # retry would otherwise hold it forever); generous, for clusters that scale up
    stall_timeout_s: float = 1800.0
    stream_threshold_mb: float = 64.0
    videos_per_decode_task: int = 4
    bf16: bool = False
    sink: SinkConfig = field(default_factory=SinkConfig)
    experiment: str = EXPERIMENT

    def validate(self) -> None:
        """Raise LabelError naming the first bad setting."""
        seg, cpa, threads = self.segments, self.cpus_per_actor, self.torch_threads
        checks = [
            (seg is None or seg >= 1, f"segments must be >= 1, got {seg}"),
            (self.top_k >= 1, f"top-k must be >= 1, got {self.top_k}"),
            (self.embedding_dtype in ("float32", "float16"),
             f"embedding dtype must be float32 or float16, got {self.embedding_dtype!r}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.actors >= 1, f"actors must be >= 1, got {self.actors}"),
            (self.gpus_per_actor >= 0, f"gpus per actor must be >= 0, got {self.gpus_per_actor}"),
            (cpa is None or cpa >= 0, f"cpus per actor must be >= 0, got {cpa}"),
            (threads is None or threads >= 1, f"torch threads must be >= 1, got {threads}"),
            (0 < self.decode_timeout_s <= MAX_DECODE_TIMEOUT_S,
             f"decode timeout must be in (0, {MAX_DECODE_TIMEOUT_S}] s, "
             f"got {self.decode_timeout_s}"),
            (0 < self.stall_timeout_s <= MAX_STALL_TIMEOUT_S,
             f"stall timeout must be in (0, {MAX_STALL_TIMEOUT_S}] s, "
             f"got {self.stall_timeout_s}"),
            # each decode task reserves memory for ~3 copies of an object read whole
            (0 <= self.stream_threshold_mb <= MAX_STREAM_THRESHOLD_MB,
             f"stream threshold must be in [0, {MAX_STREAM_THRESHOLD_MB}] MB, "
             f"got {self.stream_threshold_mb}"),
            (self.videos_per_decode_task >= 1,
             f"videos per decode task must be >= 1, got {self.videos_per_decode_task}"),
            (bool(self.input.strip()), "input is empty"),
            (bool(self.output.strip()), "output is empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise LabelError(message)


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


# ---------------------------------------------------------------------- set-up steps
def _resolve(config: LabelConfig):
    """The model reference and its (validated) config with the run's num_segments."""
    import tsm_model
    from pipeline.registry import ModelNotFoundError, resolve_model

    try:
        ref = resolve_model(config.model)
    except ModelNotFoundError as e:
        raise LabelError(str(e)) from None
    except Exception as e:
        raise LabelError(f"cannot resolve model {config.model}: {_one_line(e)}") from None
    try:
        model_config = tsm_model.load_config(ref.path)
        if config.segments is not None:
            model_config = model_config.replace(num_segments=config.segments)
    except (ValueError, OSError) as e:
        raise LabelError(f"model {config.model}: {_one_line(e)}") from None
    return ref, model_config


def _list(config: LabelConfig) -> Listing:
    try:
        return list_inputs(config.input)
    except ListingError as e:
        raise LabelError(str(e)) from None
    except Exception as e:  # credentials, endpoint, permissions
        raise LabelError(f"cannot list {config.input}: {_one_line(e)}") from None


def read_model_files(path) -> dict[str, bytes]:
    """The saved model's files (`model.safetensors`, `config.json`) as bytes."""
    from pipeline.registry import MODEL_FILES

    return {name: (Path(path) / name).read_bytes() for name in MODEL_FILES}


def _init_ray() -> bool:
    """Join RAY_ADDRESS's cluster, or start a quiet local one; True if started here."""
    import ray

    if ray.is_initialized():
        return False
    # worker output (FFmpeg noise included) stays in Ray's log files, not the console
    ray.init(
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
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


def decode_stage(todo: list[ObjectInfo], pre: PreprocessConfig, config: LabelConfig):
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
        preprocess_batch,
        fn_kwargs={"config": pre},
        batch_size=None,
        batch_format="numpy",
        num_cpus=1,
        # a decode task holds a whole object (and decord copies it) plus frames;
        # declaring it also keeps Ray from fusing this stage into the model actors
        memory=512 * MiB + 3 * pre.stream_threshold_bytes,
    )


def model_stage(ds, inf: InferenceConfig, config: LabelConfig):
    """The model actor pool over a Dataset of decoded clips; yields output tables."""
    import ray.data

    use_gpu = config.gpus_per_actor > 0
    cpus = config.cpus_per_actor if config.cpus_per_actor is not None else (1.0 if use_gpu else 0.0)
    return ds.map_batches(
        ClipClassifier,
        fn_constructor_kwargs={"config": inf},
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.actors),
        num_cpus=cpus,
        num_gpus=config.gpus_per_actor if use_gpu else None,
    )


def build_dataset(todo: list[ObjectInfo], pre: PreprocessConfig, inf: InferenceConfig,
                  config: LabelConfig):
    """The streaming Dataset of the job: decode tasks -> model actor pool."""
    return model_stage(decode_stage(todo, pre, config), inf, config)


def _torch_threads(config: LabelConfig) -> int | None:
    if config.torch_threads is not None:
        return config.torch_threads
    if config.gpus_per_actor > 0:
        return None
    # one intra-op thread per actor: the cores are shared with decode tasks, and
    # spinning OpenMP threads would steal them; scale out with more actors instead
    return max(1, round(config.cpus_per_actor or 1))


# ---------------------------------------------------------------------- MLflow
class _Run:
    """The MLflow run of one label job (client API: no global active-run state)."""

    def __init__(self, config: LabelConfig, ref, model_config, listing: Listing, skipped: int):
        from mlflow import MlflowClient

        from pipeline.tracking import configure_mlflow

        self.tracking_uri = configure_mlflow()
        self.client = MlflowClient()
        exp = self.client.get_experiment_by_name(config.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(config.experiment)
        run = self.client.create_run(
            exp_id,
            tags={"mlflow.runName": f"label {ref.name} v{ref.version}", "output": config.output},
        )
        self.run_id = run.info.run_id
        params = {
            "input": config.input,
            "output": config.output,
            "model_uri": ref.uri,
            "model_name": ref.name,
            "model_version": ref.version,
            "segments": model_config.num_segments,
            "top_k": config.top_k,
            "embeddings": config.embeddings,
            "embedding_dtype": config.embedding_dtype,
            "batch_size": config.batch_size,
            "actors": config.actors,
            "gpus_per_actor": config.gpus_per_actor,
            "input_kind": listing.kind,
            "inputs_listed": len(listing.objects),
            "inputs_skipped": skipped,
        }
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def finish(self, summary: LabelSummary) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in summary.metrics().items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self) -> None:
        self.client.set_terminated(self.run_id, "FAILED")


# ---------------------------------------------------------------------- the job
def run_label(
    config: LabelConfig,
    *,
    on_start: Callable[[Progress], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> LabelSummary:
    """Label every video of `config.input` not yet in `config.output`; returns the summary.

    Raises LabelError (one line) for bad settings, inputs, outputs or models;
    a bad *video* never raises, it becomes an error row.
    """
    started = time.monotonic()
    config.validate()
    ref, model_config = _resolve(config)
    listing = _list(config)
    import tsm_model

    schema = output_schema(tsm_model.FEATURE_DIMS[model_config.arch], config.embedding_dtype)
    try:
        resume.clean_stale_temp(config.output)
        resume.check_schema(config.output, schema)
        done = resume.done_keys(config.output, ref.name, ref.version)
    except resume.ResumeError as e:
        raise LabelError(str(e)) from None
    todo = [o for o in listing.objects if (o.uri, o.version) not in done]
    skipped = len(listing.objects) - len(todo)

    run = _Run(config, ref, model_config, listing, skipped)
    writer = PartWriter(config.output, schema, run.run_id, config.sink)
    progress = Progress(total=len(todo), skipped=skipped)
    errors: Counter[str] = Counter()
    started_ray = False
    try:
        if on_start:
            on_start(progress)
        if todo:
            import ray

            started_ray = _init_ray()
            _quiet_ray_data()
            _check_gpus(config)
            pre = PreprocessConfig(
                num_segments=model_config.num_segments,
                resize_size=model_config.resize_size,
                crop_size=model_config.input_size,
                timeout_s=config.decode_timeout_s,
                stream_threshold_bytes=int(config.stream_threshold_mb * MiB),
            )
            # the model's two files travel through Ray's object store, so actors on
            # any node of a cluster can load it (the path is only on this machine)
            model_files = ray.put(read_model_files(ref.path))
            inf = InferenceConfig(
                model_path=str(ref.path),
                model_files=model_files,
                model_name=ref.name,
                model_version=ref.version,
                run_id=run.run_id,
                num_segments=model_config.num_segments,
                top_k=config.top_k,
                embeddings=config.embeddings,
                embedding_dtype=config.embedding_dtype,
                use_gpu=config.gpus_per_actor > 0,
                bf16=config.bf16,
                torch_threads=_torch_threads(config),
            )
            ds = build_dataset(todo, pre, inf, config)
            expected = {o.uri: o.version for o in todo}
            batches = ds.iter_batches(batch_size=None, batch_format="pyarrow",
                                      prefetch_batches=2)
            for table in no_stall(batches, config.stall_timeout_s, "video finished"):
                table = _first_time_only(table, expected)
                _count(table, progress, errors)
                writer.write(table)
                if on_progress:
                    on_progress(progress)
            if expected:  # never expected to happen: the stream lost rows
                lost = error_rows(
                    schema,
                    [(u, v, LOST, "no result came back from the pipeline")
                     for u, v in expected.items()],
                    model_name=ref.name, model_version=ref.version, run_id=run.run_id,
                )
                _count(lost, progress, errors)
                writer.write(lost)
        writer.close()
    except JobStalled as e:
        writer.abort()
        run.fail()
        raise JobStalled(
            f"{e}: a model actor or decode task may be failing on every try (Ray's logs "
            f"say why); {len(writer.parts)} parts were committed, rerun to resume"
        ) from None
    except BaseException:
        writer.abort()
        run.fail()
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    summary = LabelSummary(
        input=config.input,
        output=config.output,
        model_uri=ref.uri,
        model_name=ref.name,
        model_version=ref.version,
        run_id=run.run_id,
        listed=len(listing.objects),
        duplicates=listing.duplicates,
        invalid_rows=listing.invalid_rows,
        skipped=skipped,
        ok=progress.ok,
        errors=dict(errors),
        wall_time_s=time.monotonic() - started,
        parts=list(writer.parts),
        tracking_uri=run.tracking_uri,
    )
    run.finish(summary)
    return summary


def _first_time_only(table: pa.Table, expected: dict[str, str]) -> pa.Table:
    """Rows for videos still expected (each removed as it is seen): never a video twice."""
    uris = table["video_uri"].to_pylist()
    keep = [expected.pop(u, None) is not None for u in uris]
    return table if all(keep) else table.filter(pa.array(keep))


def _count(table: pa.Table, progress: Progress, errors: Counter[str]) -> None:
    ok = pc.equal(table["status"], STATUS_OK)
    n_ok = pc.sum(ok).as_py() or 0
    progress.ok += n_ok
    progress.errors += table.num_rows - n_ok
    progress.done += table.num_rows
    if table.num_rows > n_ok:
        kinds = table.filter(pc.invert(ok))["error_kind"].to_pylist()
        errors.update(k or "unknown" for k in kinds)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] if text else type(e).__name__

