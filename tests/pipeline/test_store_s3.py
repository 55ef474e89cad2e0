"""The storage layer against a real S3-compatible server (moto, over HTTP on loopback)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline.fetch_decode import FetchDecode, fetch_decode
from pipeline.store import SourceChangedError, store_for
from pipeline.store.s3 import RangedReader, s3_client

S3 = store_for("s3://")


def put(uri: str, data: bytes) -> None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    s3_client().put_object(Bucket=bucket, Key=key, Body=data)


def job(threshold_mb: float, mode: str = "uniform") -> FetchDecode:
    return FetchDecode(num_segments=4, sampling=mode, max_frame_pixels=3840 * 2160,
                       whole_below=int(threshold_mb * 1024 * 1024))


@pytest.fixture
def blob(bucket) -> tuple[str, bytes, str]:
    data = np.random.default_rng(0).bytes(300_000)
    resp = s3_client().put_object(Bucket=bucket, Key="dir/blob.bin", Body=data)
    return f"s3://{bucket}/dir/blob.bin", data, resp["ETag"].strip('"')


def test_stat_read_list_and_missing(bucket, blob):
    uri, data, etag = blob
    info = S3.stat(uri)
    assert (info.size, info.version) == (len(data), etag)
    assert S3.read_bytes(uri) == data
    assert S3.read_bytes(uri, version=etag) == data
    put(f"s3://{bucket}/dir/.hidden.mp4", b"x")
    put(f"s3://{bucket}/dir/sub/a.MP4", b"xy")
    put(f"s3://{bucket}/dirt/b.mp4", b"not under dir/")
    listed = list(S3.list(f"s3://{bucket}/dir"))
    assert [o.uri for o in listed] == [uri, f"s3://{bucket}/dir/sub/a.MP4"]
    assert [o.uri for o in S3.list(f"s3://{bucket}/", (".mp4",))] == [
        f"s3://{bucket}/dir/sub/a.MP4", f"s3://{bucket}/dirt/b.mp4"
    ]
    assert (S3.kind(uri), S3.kind(f"s3://{bucket}/dir"), S3.kind(f"s3://{bucket}/nope")) == (
        "object", "container", "container")
    with pytest.raises(FileNotFoundError):
        S3.stat(f"s3://{bucket}/nope")
    with pytest.raises(FileNotFoundError):
        S3.read_bytes(f"s3://{bucket}/nope")


def test_rewritten_object_is_detected(bucket, blob):
    uri, _, etag = blob
    put(uri, b"new content")
    with pytest.raises(SourceChangedError):
        S3.read_bytes(uri, version=etag)
    with pytest.raises(SourceChangedError):
        RangedReader(uri, 300_000, etag).read(10)


def test_ranged_reader_behaves_like_a_file(blob):
    uri, data, etag = blob
    raw = RangedReader(uri, len(data), etag)
    assert raw.seekable() and raw.readable()
    assert raw.read(10) == data[:10]
    assert raw.seek(-5, io.SEEK_END) == len(data) - 5
    assert raw.read(100) == data[-5:]  # short read at the end
    assert raw.read(1) == b""
    raw.seek(1000)
    raw.seek(24, io.SEEK_CUR)
    assert raw.tell() == 1024
    # readall: the rest of the object
    assert raw.readall() == data[1024:]
    with pytest.raises(OSError):
        raw.seek(-1)
    buffered = io.BufferedReader(RangedReader(uri, len(data), etag), 8192)
    assert buffered.read() == data  # BufferedReader.read() delegates to readall
    buffered.seek(123_456)
    assert buffered.read(7) == data[123_456:123_463]


def test_open_input_reads_s3_through_ranged_gets(blob):
    uri, data, _ = blob
    stream = S3.open_input(uri)
    assert isinstance(stream, RangedReader)
    stream.seek(250_000)
    assert stream.read(10) == data[250_000:250_010]
    assert stream.bytes_read < 100_000  # a window around what was read, not the object


def test_sequential_reads_grow_the_window_and_seeks_shrink_it(blob):
    uri, data, etag = blob
    reader = RangedReader(uri, len(data), etag)
    got = b"".join(iter(lambda: reader.read(16_384), b""))
    assert got == data and reader.bytes_read == len(data)
    gets = reader.bytes_read  # about 64 + 128 + ... KiB windows: a handful of GETs
    reader.seek(1000)
    reader.read(10)
    assert reader.bytes_read - gets <= 64 * 1024  # a seek fetches one small window


@pytest.mark.parametrize("threshold_mb", [64, 0])
@pytest.mark.parametrize("mode", ["uniform", "keyframe"])
def test_ranged_and_whole_reads_decode_the_same_frames(bucket, video_corpus, threshold_mb,
                                                       mode):
    # 64 MB: one GET into memory; 0: ranged GETs of what the decoder reads
    path = video_corpus["vp9"]
    s3_client().upload_file(str(path), bucket, f"v/{path.name}")
    s3 = fetch_decode(S3.stat(f"s3://{bucket}/v/{path.name}"), job(threshold_mb, mode))
    local = fetch_decode(store_for(str(path)).stat(str(path)), job(threshold_mb, mode))
    assert s3.error_kind is None and local.error_kind is None
    assert np.array_equal(s3.frames, local.frames)
    for key in ("frame_indices", "num_frames", "width", "height", "frames_decoded"):
        assert s3.video[key] == local.video[key]
    assert s3.video["bytes_read"] > 0 and s3.video["read_retries"] == 0


def test_a_junk_object_read_in_ranges_is_corrupt(bucket):
    put(f"s3://{bucket}/junk.mp4", b"not a video at all" * 1000)
    r = fetch_decode(S3.stat(f"s3://{bucket}/junk.mp4"), job(0))
    assert r.error_kind == "corrupt" and "not a video" not in r.error_message


@pytest.mark.parametrize("where", ["s3", "local"])
def test_staging_then_publish_is_all_or_nothing(where, bucket, tmp_path):
    dest = f"s3://{bucket}/out/part.bin" if where == "s3" else str(tmp_path / "out" / "p.bin")
    store = store_for(dest)
    tmp = store.staging_path(dest)
    tmp.write_bytes(b"abc" * 1000)
    assert not store.is_object(dest)  # nothing visible before publishing
    store.publish(tmp, dest)
    assert store.read_bytes(dest) == b"abc" * 1000 and not tmp.exists()
    if where == "local":  # staged beside the destination (a rename), hidden
        assert tmp.parent == tmp_path / "out" and tmp.name.startswith(".")


@pytest.mark.parametrize("change", ["deleted", "rewritten"])
def test_storage_failure_inside_a_streamed_decode_is_not_called_corrupt(
    bucket, video_corpus, change
):
    # threshold 0: the decoder pulls the bytes through ranged GETs, so the failure
    # happens inside its reading, after the listing said the object was fine
    key = f"{change}.mp4"
    s3_client().upload_file(str(video_corpus["h264"]), bucket, key)
    uri = f"s3://{bucket}/{key}"
    listed = S3.stat(uri)
    if change == "deleted":
        s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        put(uri, video_corpus["vp9"].read_bytes())
    r = fetch_decode(listed, job(0))
    assert r.error_kind == {"deleted": "missing", "rewritten": "source_changed"}[change]
