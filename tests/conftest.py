"""Shared fixtures: real servers and engines on loopback, started once per session.

- `s3_server`: moto's S3 server on 127.0.0.1 (a real HTTP endpoint that boto3
  and pyarrow talk to), with the standard AWS variables pointing at it;
- `ray_cluster`: one small local Ray (2 CPUs) for every pipeline test; it is
  started after the S3 variables are set so its workers inherit them;
- `tiny_model`: a random TSM small enough for CPU tests;
- `video_corpus`: test videos made with ffmpeg (good ones in several codecs
  and broken ones), made once.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import videos


def pytest_collection_modifyitems(items):
    """The multi-node tests (tests/pipeline/test_cluster.py) run first, before the session's
    own Ray (`ray_cluster`) starts: their cluster, whose nodes they kill, is started and torn
    down in this process, and once ended a full run with the session's Ray alive beside it
    (its next job in this process exited at once, exit code 1, no report)."""
    items.sort(key=lambda item: "multinode" not in getattr(item, "fixturenames", ()))

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def _set_env(values: dict[str, str]) -> dict[str, str | None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    return old


def _restore_env(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    from pipeline.store.s3 import s3_client

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    old = _set_env({**AWS_ENV, "AWS_ENDPOINT_URL": endpoint})
    s3_client.cache_clear()  # a client made before would point elsewhere
    yield endpoint
    s3_client.cache_clear()
    _restore_env(old)
    server.stop()


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh, empty bucket for one test."""
    from pipeline.store.s3 import s3_client

    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=name)
    return name


def upload_dir(local: Path, bucket: str, prefix: str) -> str:
    """Upload every file of `local` under `s3://bucket/prefix/`; returns that URI."""
    from pipeline.store.s3 import s3_client

    for path in sorted(local.iterdir()):
        if path.is_file():
            s3_client().upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return f"s3://{bucket}/{prefix}/"


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray for the session: 2 CPUs, quiet, no dashboard."""
    import logging

    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """A SQLite MLflow store for the session (the embedded default, in a temp dir)."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    old = _set_env({"MLFLOW_TRACKING_URI": f"sqlite:///{path}"})
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    yield os.environ["MLFLOW_TRACKING_URI"]
    _restore_env(old)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store and model cache, with the working folder in tmp_path."""
    from registry.versions import CACHE_ENV

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors on a shared 2-core box: OpenMP hand-offs cost far more than they save."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random MobileNetV2 TSM: 4 classes, 4 segments, 32 px crops."""
    import torch

    import tsm_model

    torch.manual_seed(0)
    config = tsm_model.TSMConfig(
        arch="mobilenetv2", num_classes=4, num_segments=4, input_size=32, resize_size=40,
        class_names=["archery", "bowling", "cycling", "diving"],
    )
    model = tsm_model.build(config)
    # the reference init makes the classifier near zero (all scores ~0.25); widen it so
    # labels depend on the input
    torch.nn.init.normal_(model.new_fc.weight, 0.0, 0.5)
    return tsm_model.save(model, tmp_path_factory.mktemp("model") / "tiny-tsm")


GOOD = ["h264", "hevc", "vp9", "mpeg4", "odd", "w96", "vfr", "one_frame"]
# file name -> expected error_kind
BROKEN = {
    "empty.mp4": "empty",
    "text.mp4": "corrupt",
    "random.mkv": "corrupt",
    "truncated.mp4": "corrupt",  # moov atom at the end, cut off: not even a container
    "cut.mp4": "truncated",  # moov at the front, data cut off: FFmpeg says "partial file"
    "audio.mp4": "no_video_stream",
}


@pytest.fixture(scope="session")
def video_corpus(tmp_path_factory) -> dict[str, Path]:
    """Good and broken test videos in one directory, keyed by file stem / name."""
    root = tmp_path_factory.mktemp("videos")
    out: dict[str, Path] = videos.make_corpus(root, GOOD)
    good = out["h264"]
    for name in ("empty", "text", "truncated"):
        out[f"{name}.mp4"] = videos.make_broken(name, root / f"{name}.mp4", good)
    out["random.mkv"] = videos.make_broken("random", root / "random.mkv")
    out["cut.mp4"] = videos.make_cut(root / "cut.mp4")
    out["audio.mp4"] = videos.make_audio_only(root / "audio.mp4")
    return out


def output_parts(root: str) -> list[str]:
    """Every committed part file under an output (all model partitions)."""
    from pipeline.store import store_for

    store = store_for(root)
    if store.kind(root) == "missing":
        return []
    return sorted(o.uri for o in store.list(root, suffixes=(".parquet",))
                  if o.uri.rsplit("/", 1)[-1].startswith("part-"))


def output_rows(root: str):
    """Every committed row under an output, as one Arrow table (None if there is none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.store import store_for

    tables = []
    for uri in output_parts(root):
        with store_for(uri).open_input(uri) as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables) if tables else None
