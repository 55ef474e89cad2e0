"""The output contract of `tsm label`: one Parquet row per input video.

Everything a reader of the output relies on is defined here, once:

- `ErrorKind`: every machine-readable reason a video has no labels, with its
  meaning and whether a rerun should try the video again;
- `COLUMNS`: the columns, their types and meanings (columns may be added over
  time, never renamed); `output_schema` fills in the embedding's width;
- `build_rows`: the one builder of output rows, for labelled videos and error
  rows alike.

Adding a column means adding a `Column` here and producing its value where it
is measured (a `VIDEO` column in the decode stage, a `PREDICTION` column in
the model stage); nothing in between changes.

Rows without an embedding (errors, or `--no-embeddings`) hold a NaN-filled
vector rather than a null: pyarrow up to 25 cannot read a null fixed-size
list back from Parquet (apache/arrow#35692, fixed in a later release), and
the output must stay readable by pyarrow. A constant vector costs next to
nothing once dictionary-encoded. Filter on `status = 'ok'`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np
import pyarrow as pa


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"


class DecodedBy(StrEnum):
    """Values of the `decoder` column: what turned the video into frames."""

    CPU = "cpu"  # the CPU decoder, in the decode task
    DALI = "dali"  # NVIDIA DALI, in the model actor (NVDEC on a GPU)
    CPU_FALLBACK = "cpu_fallback"  # DALI gave up on it; the CPU decoder read it in the actor


class ErrorKind(StrEnum):
    """Why a video has no labels. `final`: the video itself is at fault; otherwise a rerun
    tries it again (the store, the network, a crash or a limit may not hold next time)."""

    final: bool
    meaning: str

    def __new__(cls, value: str, final: bool, meaning: str) -> ErrorKind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.final = final
        member.meaning = meaning
        return member

    # the video itself
    EMPTY = "empty", True, "the file has zero bytes"
    NO_VIDEO_STREAM = "no_video_stream", True, "a container without a video stream (audio only)"
    ZERO_FRAMES = "zero_frames", True, "a video stream with no decodable frame"
    TRUNCATED = "truncated", True, "the container says the data ends early (a cut-off upload)"
    CORRUPT = "corrupt", True, "not a video, or damaged beyond decoding"
    NOT_A_FILE = "not_a_file", True, "a directory, FIFO or device with a video's name"
    TOO_LARGE = "too_large", True, "frames larger than --max-frame-pixels (memory would not do)"
    BAD_NAME = "bad_name", True, "a file name that is not valid UTF-8 (rename the file)"
    # the store or the run, not the video
    MISSING = "missing", False, "the object does not exist (any more)"
    READ_ERROR = "read_error", False, "the store refused or failed the read (permissions, network)"
    SOURCE_CHANGED = "source_changed", False, "the object was rewritten between listing and reading"
    TIMEOUT = "timeout", False, "fetch + decode took longer than --decode-timeout"
    DECODER_CRASH = "decoder_crash", False, "the decoding process died (e.g. FFmpeg crashed)"
    RESOURCE_LIMIT = "resource_limit", False, "decoding exceeded its memory cap"
    MODEL_ERROR = "model_error", False, "the model failed on the clip or gave a non-finite output"
    INTERNAL = "internal", False, "an unexpected failure (a bug); the message says what"


@dataclass(frozen=True)
class Column:
    """One output column. `group` says who fills it in and when it is null:

    - key, verdict, stamp: every row;
    - video: what decoding measured; null when the video was not decoded;
    - prediction: the model's output; null (NaN embedding) unless status is ok.
    """

    name: str
    type: pa.DataType | None  # None: the embedding, sized per model by output_schema
    group: str
    nullable: bool
    meaning: str


KEY, VERDICT, STAMP, VIDEO, PREDICTION = "key", "verdict", "stamp", "video", "prediction"

COLUMNS: tuple[Column, ...] = (
    Column("video_uri", pa.string(), KEY, False, "the input, as listed"),
    Column("source_version", pa.string(), KEY, False,
           "S3 ETag, or <size>-<mtime_ns> of a local file; '' when it did not exist"),
    Column("status", pa.string(), VERDICT, False, "ok or error"),
    Column("error_kind", pa.string(), VERDICT, True, "an ErrorKind; null when ok"),
    Column("error_message", pa.string(), VERDICT, True, "for people; null when ok"),
    Column("model_name", pa.string(), STAMP, False, "the registered model (or folder) name"),
    Column("model_version", pa.string(), STAMP, False,
           "the registry version, or local-<sha256[:12]> of the weights"),
    Column("top_k_labels", pa.list_(pa.string()), PREDICTION, True, "class names, best first"),
    Column("top_k_scores", pa.list_(pa.float32()), PREDICTION, True,
           "softmax probabilities of the averaged segment logits"),
    Column("top_k_ids", pa.list_(pa.int32()), PREDICTION, True, "class indices"),
    Column("embedding", None, PREDICTION, True,
           "backbone features averaged over segments; all-NaN when absent"),
    Column("num_frames", pa.int64(), VIDEO, True, "frames in the video stream"),
    Column("fps", pa.float64(), VIDEO, True, "average frame rate"),
    Column("duration_s", pa.float64(), VIDEO, True, "end time of the last frame"),
    Column("width", pa.int32(), VIDEO, True, "frame width in pixels"),
    Column("height", pa.int32(), VIDEO, True, "frame height in pixels"),
    Column("frame_indices", pa.list_(pa.int32()), VIDEO, True, "the frames actually sampled"),
    Column("frames_decoded", pa.int32(), VIDEO, True, "frames decoded to get the sample"),
    Column("bytes_read", pa.int64(), VIDEO, True, "bytes fetched from the store to decode"),
    Column("read_retries", pa.int32(), VIDEO, True, "store requests that had to be repeated"),
    Column("decode_cpu_s", pa.float32(), VIDEO, True, "CPU seconds to fetch and decode"),
    Column("decoder", pa.string(), VIDEO, True,
           "what decoded the frames: cpu, dali or cpu_fallback (DecodedBy)"),
    Column("run_id", pa.string(), STAMP, False, "the MLflow run that wrote the row"),
    Column("processed_at", pa.timestamp("us", tz="UTC"), STAMP, False, "when the row was made"),
    Column("sampling", pa.string(), STAMP, False,
           "how frames were chosen: uniform (segment centres) or keyframe"),
    Column("num_segments", pa.int32(), STAMP, False, "frames sampled per video"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
VIDEO_COLUMNS: tuple[Column, ...] = tuple(c for c in COLUMNS if c.group == VIDEO)
# what resume reads to know which videos already have a final verdict for these settings
# (the model's name and version are the output's partition)
KEY_COLUMNS = ("video_uri", "source_version", "sampling", "num_segments", "status", "error_kind")
FINAL_KINDS: tuple[str, ...] = tuple(k.value for k in ErrorKind if k.final)
EMBEDDING_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}


def embedding_type(dim: int, dtype: str = "float32") -> pa.DataType:
    """`fixed_size_list<dtype>[dim]`."""
    if dtype not in EMBEDDING_DTYPES:
        allowed = ", ".join(sorted(EMBEDDING_DTYPES))
        raise ValueError(f"embedding dtype must be one of {allowed}, got {dtype!r}")
    if dim < 1:
        raise ValueError(f"embedding dim must be >= 1, got {dim}")
    return pa.list_(EMBEDDING_DTYPES[dtype], dim)


def output_schema(embedding_dim: int, embedding_dtype: str = "float32",
                  kept: tuple[str, ...] = ()) -> pa.Schema:
    """The full output schema for a model whose embedding has `embedding_dim` values, with
    the manifest columns a run carries into its rows (`--keep-columns`) last, as strings."""
    emb = embedding_type(embedding_dim, embedding_dtype)
    return pa.schema(
        [pa.field(c.name, c.type if c.type is not None else emb, nullable=c.nullable)
         for c in COLUMNS] + [pa.field(name, pa.string()) for name in kept]
    )


def video_columns(measured: Sequence[Mapping[str, object] | None]) -> dict[str, pa.Array]:
    """Per-video measurements (`{column: value}`, None for a video not decoded) as typed
    arrays of the `VIDEO` columns; a NaN float (a container that did not say) becomes null."""
    out = {}
    for col in VIDEO_COLUMNS:
        values = [None if m is None else m.get(col.name) for m in measured]
        values = [None if isinstance(v, float) and np.isnan(v) else v for v in values]
        out[col.name] = pa.array(values, type=col.type)
    return out


@dataclass(frozen=True)
class RunStamp:
    """What every row of one run carries: the model, the run, the settings that shape labels."""

    model_name: str
    model_version: str
    run_id: str
    sampling: str
    num_segments: int


@dataclass(frozen=True)
class Predictions:
    """The model's outputs for the rows of a batch (values in rows not ok are ignored)."""

    top_k_ids: np.ndarray  # (n, k) int
    top_k_scores: np.ndarray  # (n, k) float
    class_names: Sequence[str]
    embedding: np.ndarray | None  # (n, D) float, None without embeddings


def _lists(values: np.ndarray, typ: pa.DataType, null: np.ndarray) -> pa.Array:
    n, width = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=typ),
                                    mask=pa.array(null))


def _embedding(values: np.ndarray, present: np.ndarray, typ: pa.FixedSizeListType) -> pa.Array:
    """`(n, D)` values as an embedding column; rows not `present` become all-NaN."""
    dtype = typ.value_type.to_pandas_dtype()
    values = np.array(values, dtype=dtype, copy=True).reshape(len(present), typ.list_size)
    values[~present] = np.nan
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), type=typ)


def build_rows(
    schema: pa.Schema,
    stamp: RunStamp,
    *,
    video_uri: Sequence[str],
    source_version: Sequence[str],
    error_kind: Sequence[ErrorKind | str | None],
    error_message: Sequence[str | None],
    video: Mapping[str, pa.Array] | None = None,
    predictions: Predictions | None = None,
    kept: Mapping[str, pa.Array] | None = None,
) -> pa.Table:
    """Output rows in `schema`: a row is ok exactly when its `error_kind` is None.

    `video` holds the `VIDEO` columns (see `video_columns`); without it they
    are null. Prediction columns are filled from `predictions` for ok rows.
    `kept` holds the manifest columns the schema carries (null without them).
    """
    n = len(video_uri)
    kinds = [None if k is None else ErrorKind(k).value for k in error_kind]
    ok = np.array([k is None for k in kinds], dtype=bool)
    columns: dict[str, pa.Array] = {
        "video_uri": pa.array(list(video_uri), pa.string()),
        "source_version": pa.array(list(source_version), pa.string()),
        "status": pa.array([Status.OK if o else Status.ERROR for o in ok], pa.string()),
        "error_kind": pa.array(kinds, pa.string()),
        "error_message": pa.array([None if o else m for o, m in zip(ok, error_message,
                                                                    strict=True)], pa.string()),
        "model_name": pa.array([stamp.model_name] * n, pa.string()),
        "model_version": pa.array([stamp.model_version] * n, pa.string()),
        "run_id": pa.array([stamp.run_id] * n, pa.string()),
        "processed_at": pa.array([datetime.now(UTC)] * n, pa.timestamp("us", tz="UTC")),
        "sampling": pa.array([stamp.sampling] * n, pa.string()),
        "num_segments": pa.array([stamp.num_segments] * n, pa.int32()),
    }
    for col in VIDEO_COLUMNS:
        given = None if video is None else video.get(col.name)
        columns[col.name] = pa.nulls(n, col.type) if given is None else given
    if predictions is None:
        for name in ("top_k_labels", "top_k_scores", "top_k_ids"):
            columns[name] = pa.nulls(n, schema.field(name).type)
    else:
        ids = np.asarray(predictions.top_k_ids, dtype=np.int32)
        names = np.asarray(predictions.class_names, dtype=object)
        scores = np.asarray(predictions.top_k_scores, dtype=np.float32)
        columns["top_k_ids"] = _lists(ids, pa.int32(), ~ok)
        columns["top_k_scores"] = _lists(scores, pa.float32(), ~ok)
        columns["top_k_labels"] = _lists(names[ids], pa.string(), ~ok)
    emb_type = schema.field("embedding").type
    if predictions is None or predictions.embedding is None:
        columns["embedding"] = _embedding(np.zeros((n, emb_type.list_size)),
                                          np.zeros(n, dtype=bool), emb_type)
    else:
        columns["embedding"] = _embedding(predictions.embedding, ok, emb_type)
    for name in schema.names[len(COLUMNS):]:  # manifest columns carried along
        given = None if kept is None else kept.get(name)
        columns[name] = pa.nulls(n, pa.string()) if given is None else given
    return pa.Table.from_pydict({name: columns[name] for name in schema.names}, schema=schema)
