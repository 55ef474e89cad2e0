"""The Parquet output contract of `tsm label`: one row per input video.

`OUTPUT_FIELDS` is the one definition of the columns; `output_schema` fills
in the embedding width and precision of the model at hand (a fixed-size list
needs its length). Columns may be added over time, never renamed.

Rows without an embedding (errors, or `--no-embeddings`) hold a NaN-filled
vector rather than a null: pyarrow up to 25 cannot read a null fixed-size
list back from Parquet (apache/arrow#35692, fixed in a later release), and
the output must stay readable by pyarrow. A constant vector costs next to
nothing once dictionary-encoded. Filter on `status = 'ok'`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

STATUS_OK = "ok"
STATUS_ERROR = "error"

EMBEDDING_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}

# (name, type, nullable); the embedding's type is filled in by output_schema
OUTPUT_FIELDS: tuple[tuple[str, pa.DataType | None, bool], ...] = (
    ("video_uri", pa.string(), False),
    ("source_version", pa.string(), False),
    ("status", pa.string(), False),  # "ok" | "error"
    ("error_kind", pa.string(), True),  # machine-readable, null when ok
    ("error_message", pa.string(), True),  # for people, null when ok
    ("model_name", pa.string(), False),
    ("model_version", pa.string(), False),
    ("top_k_labels", pa.list_(pa.string()), True),
    ("top_k_scores", pa.list_(pa.float32()), True),  # softmax probabilities
    ("top_k_ids", pa.list_(pa.int32()), True),
    ("embedding", None, True),  # fixed_size_list<float32|float16>[D]; NaN when absent
    ("num_frames", pa.int64(), True),
    ("fps", pa.float64(), True),
    ("duration_s", pa.float64(), True),
    ("width", pa.int32(), True),
    ("height", pa.int32(), True),
    ("frame_indices", pa.list_(pa.int32()), True),  # the frames actually sampled
    ("run_id", pa.string(), False),  # the MLflow run that wrote the row
    ("processed_at", pa.timestamp("us", tz="UTC"), False),
)

COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in OUTPUT_FIELDS)
# what resume needs to know which videos a model version has already labelled
KEY_COLUMNS = ("video_uri", "source_version", "model_name", "model_version")


def embedding_type(dim: int, dtype: str = "float32") -> pa.DataType:
    """`fixed_size_list<dtype>[dim]`."""
    if dtype not in EMBEDDING_DTYPES:
        allowed = ", ".join(sorted(EMBEDDING_DTYPES))
        raise ValueError(f"embedding dtype must be one of {allowed}, got {dtype!r}")
    if dim < 1:
        raise ValueError(f"embedding dim must be >= 1, got {dim}")
    return pa.list_(EMBEDDING_DTYPES[dtype], dim)


def output_schema(embedding_dim: int, embedding_dtype: str = "float32") -> pa.Schema:
    """The full output schema for a model whose embedding has `embedding_dim` values."""
    emb = embedding_type(embedding_dim, embedding_dtype)
    return pa.schema(
        [pa.field(name, typ if typ is not None else emb, nullable=nullable)
         for name, typ, nullable in OUTPUT_FIELDS]
    )


def embedding_array(
    values: np.ndarray, present: np.ndarray, typ: pa.FixedSizeListType
) -> pa.FixedSizeListArray:
    """`(n, D)` float values as an embedding column; rows not `present` become all-NaN."""
    dtype = typ.value_type.to_pandas_dtype()
    values = np.array(values, dtype=dtype, copy=True).reshape(len(present), typ.list_size)
    values[~np.asarray(present, dtype=bool)] = np.nan
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), type=typ)


def error_rows(
    schema: pa.Schema,
    rows: list[tuple[str, str, str, str]],
    *,
    model_name: str,
    model_version: str,
    run_id: str,
) -> pa.Table:
    """Error rows `(uri, source_version, error_kind, error_message)` as a table in `schema`.

    For videos that never reached the model stage's own error handling.
    """
    from datetime import UTC, datetime

    n = len(rows)
    columns = {name: pa.nulls(n, type=schema.field(name).type) for name in schema.names}
    emb = schema.field("embedding").type
    columns["embedding"] = embedding_array(
        np.zeros((n, emb.list_size)), np.zeros(n, dtype=bool), emb
    )
    columns.update(
        video_uri=pa.array([r[0] for r in rows], pa.string()),
        source_version=pa.array([r[1] for r in rows], pa.string()),
        status=pa.array([STATUS_ERROR] * n, pa.string()),
        error_kind=pa.array([r[2] for r in rows], pa.string()),
        error_message=pa.array([r[3] for r in rows], pa.string()),
        model_name=pa.array([model_name] * n, pa.string()),
        model_version=pa.array([model_version] * n, pa.string()),
        run_id=pa.array([run_id] * n, pa.string()),
        processed_at=pa.array([datetime.now(UTC)] * n, pa.timestamp("us", tz="UTC")),
    )
    return pa.Table.from_pydict(columns, schema=schema)
