"""The storage layer against a real S3-compatible server (moto, over HTTP on loopback)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline import storage
from pipeline.storage import RangedReader, SourceChangedError


@pytest.fixture
def blob(bucket) -> tuple[str, bytes, str]:
    data = np.random.default_rng(0).bytes(300_000)
    resp = storage.s3_client().put_object(Bucket=bucket, Key="dir/blob.bin", Body=data)
    return f"s3://{bucket}/dir/blob.bin", data, resp["ETag"].strip('"')


def test_stat_read_list_and_missing(bucket, blob):
    uri, data, etag = blob
    info = storage.stat(uri)
    assert (info.size, info.version) == (len(data), etag)
    assert storage.read_bytes(uri) == data
    assert storage.read_bytes(uri, version=etag) == data
    storage.write_bytes(f"s3://{bucket}/dir/.hidden.mp4", b"x")
    storage.write_bytes(f"s3://{bucket}/dir/sub/a.MP4", b"xy")
    listed = list(storage.list_objects(f"s3://{bucket}/dir/"))
    assert [o.uri for o in listed] == [uri, f"s3://{bucket}/dir/sub/a.MP4"]
    assert [o.uri for o in storage.list_objects(f"s3://{bucket}/", (".mp4",))] == [
        f"s3://{bucket}/dir/sub/a.MP4"
    ]
    with pytest.raises(FileNotFoundError):
        storage.stat(f"s3://{bucket}/nope")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"s3://{bucket}/nope")


def test_rewritten_object_is_detected(bucket, blob):
    uri, _, etag = blob
    storage.write_bytes(uri, b"new content")
    with pytest.raises(SourceChangedError):
        storage.read_bytes(uri, version=etag)
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
    stream = storage.open_input(uri)
    assert isinstance(stream, io.BufferedReader) and isinstance(stream.raw, RangedReader)
    stream.seek(250_000)
    assert stream.read(10) == data[250_000:250_010]


@pytest.mark.parametrize("threshold_mb", [64, 0])
def test_streamed_and_whole_reads_decode_the_same_frames(bucket, video_corpus, threshold_mb):
    # 64 MB: one GET into memory; 0: FFmpeg streams the presigned URL with ranged GETs
    from pipeline.preprocess import PreprocessConfig, preprocess_one

    path = video_corpus["vp9"]
    storage.s3_client().upload_file(str(path), bucket, f"v/{path.name}")
    cfg = PreprocessConfig(num_segments=4, resize_size=40, crop_size=32,
                           stream_threshold_bytes=threshold_mb * 1024 * 1024)
    s3 = preprocess_one(storage.stat(f"s3://{bucket}/v/{path.name}"), cfg)
    local = preprocess_one(storage.stat(str(path)), cfg)
    assert s3.ok and local.ok
    assert s3.indices.tolist() == local.indices.tolist()
    assert np.array_equal(s3.clip, local.clip) and s3.meta == local.meta


def test_presigned_urls_never_reach_error_messages(bucket):
    from pipeline.preprocess import PreprocessConfig, preprocess_one

    storage.write_bytes(f"s3://{bucket}/junk.mp4", b"not a video at all" * 1000)
    cfg = PreprocessConfig(num_segments=4, resize_size=40, crop_size=32,
                           stream_threshold_bytes=0)
    r = preprocess_one(storage.stat(f"s3://{bucket}/junk.mp4"), cfg)
    assert r.error_kind == "corrupt"
    for secret in ("Signature", "AWSAccessKeyId", "X-Amz", "testing"):
        assert secret not in r.error_message


def test_upload_file_and_delete(bucket, tmp_path):
    src = tmp_path / "part.bin"
    src.write_bytes(b"abc" * 1000)
    storage.upload_file(src, f"s3://{bucket}/out/part.bin")
    assert storage.read_bytes(f"s3://{bucket}/out/part.bin") == b"abc" * 1000
    storage.delete(f"s3://{bucket}/out/part.bin")
    storage.delete(f"s3://{bucket}/out/part.bin")  # already gone: fine
    with pytest.raises(FileNotFoundError):
        storage.stat(f"s3://{bucket}/out/part.bin")
    # local: a rename into place
    src.write_bytes(b"local")
    storage.upload_file(src, str(tmp_path / "out" / "p.bin"))
    assert not src.exists() and (tmp_path / "out" / "p.bin").read_bytes() == b"local"


@pytest.mark.parametrize("change", ["deleted", "rewritten"])
def test_storage_failure_inside_a_streamed_decode_is_not_called_corrupt(
    bucket, video_corpus, change
):
    # threshold 0: the decoder pulls the bytes through ranged GETs itself, so the
    # failure happens inside decord's read, after the listing said the object was fine
    from pipeline.preprocess import (
        MISSING,
        SOURCE_CHANGED,
        PreprocessConfig,
        preprocess_one,
    )

    key = f"{change}.mp4"
    storage.s3_client().upload_file(str(video_corpus["h264"]), bucket, key)
    uri = f"s3://{bucket}/{key}"
    listed = storage.stat(uri)
    if change == "deleted":
        storage.delete(uri)
    else:
        storage.write_bytes(uri, video_corpus["vp9"].read_bytes())
    cfg = PreprocessConfig(num_segments=4, resize_size=40, crop_size=32,
                           stream_threshold_bytes=0)
    r = preprocess_one(listed, cfg)
    assert r.error_kind == {"deleted": MISSING, "rewritten": SOURCE_CHANGED}[change]
