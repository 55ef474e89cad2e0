"""A flaky store: 500/503s, resets, stalls and cut bodies through a proxy in front of the
local S3 server. Nothing may be lost, duplicated, or given a wrong final verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import BROKEN, output_rows
from faults import FAULTS, FaultProxy

from pipeline.store import store_for
from pipeline.store.s3 import READ_TIMEOUT_ENV, RangedReader, s3_client

S3 = store_for("s3://")


@pytest.fixture
def faulty(s3_server, monkeypatch):
    """`faulty(rate)`: this process's S3 client now goes through a fault-injecting proxy."""
    proxies = []

    def make(rate: float, **kw) -> FaultProxy:
        proxy = FaultProxy(s3_server, rate, stall_s=1.5, **kw)
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv(READ_TIMEOUT_ENV, "0.5")  # a stalled answer is retried quickly
        s3_client.cache_clear()
        return proxy

    yield make
    s3_client.cache_clear()
    for proxy in proxies:
        proxy.close()


def upload(bucket: str, key: str, data: bytes) -> str:
    s3_client().put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def test_whole_and_ranged_reads_come_through_a_flaky_store(bucket, faulty):
    data = np.random.default_rng(1).bytes(3_000_000)
    uri = upload(bucket, "blob.bin", data)  # before the faults
    proxy = faulty(0.3, seed=1)
    info = S3.stat(uri)
    assert S3.read_bytes(uri, info.version) == data
    reader = RangedReader(uri, info.size, info.version)
    assert b"".join(iter(lambda: reader.read(40_000), b"")) == data
    for start in (2_999_000, 17, 1_500_000):
        reader.seek(start)
        assert reader.read(500) == data[start : start + 500]
    assert sum(proxy.injected.values()) > 5 and reader.retries > 0


def test_decoding_through_a_flaky_store_gives_the_fault_free_verdicts(bucket, video_corpus,
                                                                      faulty):
    from pipeline.fetch_decode import FetchDecode, fetch_decode

    names = ["h264", "vp9", "hevc", *BROKEN]
    for name in names:
        upload(bucket, f"v/{video_corpus[name].name}", video_corpus[name].read_bytes())
    objects = [S3.stat(f"s3://{bucket}/v/{video_corpus[n].name}") for n in names]
    jobs = [FetchDecode(4, mode, 3840 * 2160, whole_below)
            for mode in ("uniform", "keyframe") for whole_below in (0, 1 << 30)]
    clean = {(o, j): fetch_decode(o, j) for o in objects for j in jobs}
    proxy = faulty(0.25, seed=2)
    for (obj, job), want in clean.items():
        got = fetch_decode(obj, job)
        # retries hide the faults: the same verdict, the same frames
        assert (got.error_kind, got.video.get("frame_indices")) == (
            want.error_kind, want.video.get("frame_indices")), (obj.uri, job)
    assert set(proxy.injected) == set(FAULTS), proxy.injected  # every kind of fault was met


def test_parts_and_the_lease_come_through_a_flaky_store(bucket, faulty):
    from pipeline.contract import RunStamp, build_rows, output_schema
    from pipeline.sink import PartSpec, write_part
    from pipeline.table import OutputTable

    faulty(0.2, seed=3)
    root = f"s3://{bucket}/labels/"
    table = OutputTable(root, "m", "1")
    schema = output_schema(4)
    with S3.lease(root, "lease-x"):  # acquired once, renewed, released: no false "busy"
        for start in range(0, 40, 10):
            uris = [f"s3://b/v{i}" for i in range(start, start + 10)]
            rows = build_rows(schema, RunStamp("m", "1", "run", "uniform", 8),
                              video_uri=uris, source_version=["e"] * 10,
                              error_kind=["corrupt"] * 10, error_message=["x"] * 10)
            spec = PartSpec(root, table.partition, "run", "lease-x", schema, 10, "zstd")
            assert write_part(rows, spec).to_pylist()[0]["rows"] == 10
    assert len(table.done("uniform", 8)) == 40
    assert S3.lease(root, "lease-y").acquire().holds()  # released: the next run gets it


RUN = textwrap.dedent("""
    import json, sys
    from pipeline.job import run_label
    from pipeline.settings import LabelConfig
    s = run_label(LabelConfig(input=sys.argv[1], output=sys.argv[2], model=sys.argv[3],
                              whole_read_mb=0, actors=1))
    print(json.dumps({"errors": s.errors, "ok": s.ok, "retries": s.cost["read_retries"]}))
""")


@pytest.mark.usefixtures("mlflow_store")
def test_a_label_job_through_a_flaky_store_loses_nothing(bucket, video_corpus, tiny_model,
                                                         s3_server, tmp_path):
    # each good video under 4 names: enough requests that 10 % of them is many faults
    sources = {f"{copy}-{video_corpus[n].name}": video_corpus[n]
               for n in ("h264", "vp9", "mpeg4", "w96", "odd") for copy in range(4)}
    sources.update({name: video_corpus[name] for name in BROKEN})
    want = {key: BROKEN.get(key) for key in sources}
    for key, source in sources.items():
        upload(bucket, f"in/{key}", source.read_bytes())
    proxy = FaultProxy(s3_server, 0.1, seed=4, stall_s=1.5)
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, READ_TIMEOUT_ENV: "0.5"}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, whose workers see the proxy
    out = f"s3://{bucket}/labels/"
    runs, retries = [], 0
    try:
        for _ in range(4):  # a nightly job reruns; retryable errors are tried again
            done = subprocess.run(
                [sys.executable, "-c", RUN, f"s3://{bucket}/in/", out, str(tiny_model)],
                env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-2000:]
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            retries += runs[-1]["retries"]
            if not set(runs[-1]["errors"]) - set(BROKEN.values()):
                break
    finally:
        proxy.close()
    assert sum(proxy.injected.values()) >= 5, proxy.injected  # ~60 requests at 10 %
    rows = output_rows(out).to_pylist()
    latest = {}
    for r in sorted(rows, key=lambda r: r["processed_at"]):
        latest[r["video_uri"].rsplit("/", 1)[-1]] = r
    assert sorted(latest) == sorted(want)  # none lost
    for key, kind in want.items():  # the right verdict: transient faults never became final
        assert latest[key]["error_kind"] == kind, (key, latest[key]["error_message"])
    final = [r for r in rows if r["status"] == "ok" or r["error_kind"] in BROKEN.values()]
    assert len(final) == len(want)  # each video's final verdict written once: no duplicate
    assert retries > 0  # and the summary counts what was retried
