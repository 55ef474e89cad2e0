"""The storage layer against a real S3-compatible server (moto, over HTTP on loopback)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline import storage
from pipeline.decode import decode_clip
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
    raw = RangedReader(uri, len(data), etag, part_size=64 * 1024, parallel=4)
    assert raw.seekable() and raw.readable()
    assert raw.read(10) == data[:10]
    assert raw.seek(-5, io.SEEK_END) == len(data) - 5
    assert raw.read(100) == data[-5:]  # short read at the end
    assert raw.read(1) == b""
    raw.seek(1000)
    raw.seek(24, io.SEEK_CUR)
    assert raw.tell() == 1024
    # readall: the rest of the object as parallel ranged GETs, in order
    assert raw.readall() == data[1024:]
    with pytest.raises(OSError):
        raw.seek(-1)
    buffered = io.BufferedReader(RangedReader(uri, len(data), etag, part_size=50_000), 8192)
    assert buffered.read() == data  # BufferedReader.read() delegates to readall
    buffered.seek(123_456)
    assert buffered.read(7) == data[123_456:123_463]


def test_open_input_switches_to_ranged_reads_above_the_threshold(blob):
    uri, data, _ = blob
    small = storage.open_input(uri, stream_threshold=10 * len(data))
    assert isinstance(small, io.BytesIO)
    big = storage.open_input(uri, stream_threshold=1000)
    assert isinstance(big, io.BufferedReader) and isinstance(big.raw, RangedReader)
    assert big.read() == data == small.read()


def test_ranged_stream_decodes_the_same_frames_as_a_whole_read(bucket, video_corpus):
    path = video_corpus["vp9"]
    uri = f"s3://{bucket}/v/{path.name}"
    storage.s3_client().upload_file(str(path), bucket, f"v/{path.name}")
    info = storage.stat(uri)
    whole = storage.open_input(uri, size=info.size, version=info.version, stream_threshold=None)
    streamed = storage.open_input(uri, size=info.size, version=info.version, stream_threshold=0)
    assert isinstance(streamed.raw, RangedReader)
    a, idx_a, meta_a = decode_clip(whole, 4)
    b, idx_b, meta_b = decode_clip(streamed, 4)
    local, idx_c, _ = decode_clip(str(path), 4)
    assert idx_a.tolist() == idx_b.tolist() == idx_c.tolist()
    assert np.array_equal(a, b) and np.array_equal(a, local)
    assert meta_a == meta_b


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
