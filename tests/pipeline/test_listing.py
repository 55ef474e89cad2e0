"""Inputs: directories, S3 prefixes and manifests (Parquet, CSV, JSON lines), deduplicated."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import upload_dir

from pipeline.listing import MISSING_VERSION, ListingError, list_inputs
from pipeline.store import store_for
from pipeline.store.s3 import s3_client


@pytest.fixture
def vdir(tmp_path):
    d = tmp_path / "videos"
    (d / "sub").mkdir(parents=True)
    for name in ("b.mp4", "a.MKV", "sub/c.webm", "notes.txt", ".hidden.mp4", "meta.json"):
        (d / name).write_bytes(b"x" * 10)
    return d


def write_manifest(path, fmt: str, rows: list[dict]) -> str:
    table = pa.Table.from_pylist(rows)
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "csv":
        import pyarrow.csv

        pyarrow.csv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_directory_keeps_videos_only_in_order(vdir):
    listing = list_inputs(str(vdir))
    names = [o.uri.removeprefix(str(vdir) + "/") for o in listing.entries]
    assert names == ["a.MKV", "b.mp4", "sub/c.webm"]
    assert listing.kind == "directory"
    obj = listing.entries[0]
    assert obj.size == 10 and obj.version.startswith("10-") and obj.error_kind is None


def test_every_odd_directory_entry_is_an_error_entry_not_a_crash(vdir):
    import os

    os.symlink(vdir / "nowhere.mp4", vdir / "dangling.mp4")
    os.symlink(vdir / "loop2.mp4", vdir / "loop1.mp4")
    os.symlink(vdir / "loop1.mp4", vdir / "loop2.mp4")
    os.mkfifo(vdir / "pipe.mp4")
    os.symlink(vdir / "b.mp4", vdir / "link.mp4")  # a good link is a video
    bad_name = os.fsencode(str(vdir)) + b"/caf\xe9.mp4"
    with open(bad_name, "wb") as f:
        f.write(b"x")
    entries = {os.path.basename(e.uri): e for e in list_inputs(str(vdir)).entries}
    assert entries["dangling.mp4"].error_kind == "missing"
    assert entries["loop1.mp4"].error_kind == "read_error"
    assert "loop" in entries["loop1.mp4"].error_message
    assert entries["pipe.mp4"].error_kind == "not_a_file"
    assert entries["link.mp4"].error_kind is None and entries["link.mp4"].size == 10
    (bad,) = [e for e in entries.values() if e.error_kind == "bad_name"]
    assert bad.uri.endswith("caf\\xe9.mp4") and bad.uri.encode("utf-8")


def test_relative_local_paths_give_the_same_uris_as_absolute_ones(vdir, monkeypatch):
    # resume keys on the URI: `videos`, `./videos/` and the absolute path must agree
    monkeypatch.chdir(vdir.parent)
    absolute = [o.uri for o in list_inputs(str(vdir)).entries]
    assert [o.uri for o in list_inputs("videos").entries] == absolute
    assert [o.uri for o in list_inputs("./videos/").entries] == absolute
    assert [o.uri for o in list_inputs("videos/b.mp4").entries] == [str(vdir / "b.mp4")]


def test_manifest_uris_are_normalised_so_one_file_is_one_video(vdir, tmp_path):
    (tmp_path / "man").mkdir()
    rows = [{"uri": str(vdir / "b.mp4")}, {"uri": f"file://{vdir}/b.mp4"},
            {"uri": f"{vdir}/./sub/../b.mp4"}, {"uri": "../videos/b.mp4"}]
    listing = list_inputs(write_manifest(tmp_path / "man" / "m.csv", "csv", rows))
    assert [o.uri for o in listing.entries] == [str(vdir / "b.mp4")]
    assert listing.duplicates == 3


def test_single_file(vdir):
    listing = list_inputs(str(vdir / "b.mp4"))
    assert [o.uri for o in listing.entries] == [str(vdir / "b.mp4")] and listing.kind == "file"


@pytest.mark.parametrize("fmt, suffix", [("parquet", ".parquet"), ("csv", ".csv"),
                                         ("jsonl", ".jsonl")])
def test_local_manifest_formats_dedupe_and_stat(vdir, tmp_path, fmt, suffix):
    rows = [
        {"uri": str(vdir / "b.mp4")},
        {"uri": "videos/a.MKV"},  # relative to the manifest
        {"uri": str(vdir / "b.mp4")},  # duplicate
        {"uri": str(vdir / "gone.mp4")},  # does not exist: kept, becomes an error row
        {"uri": ""},  # no uri: counted, dropped
    ]
    listing = list_inputs(write_manifest(tmp_path / f"m{suffix}", fmt, rows))
    assert [o.uri for o in listing.entries] == [
        str(vdir / "b.mp4"), str(vdir / "a.MKV"), str(vdir / "gone.mp4")
    ]
    assert listing.duplicates == 1 and listing.invalid_rows == 1
    info = store_for(str(vdir)).stat(str(vdir / "b.mp4"))
    assert (listing.entries[0].version, listing.entries[0].size) == (info.version, info.size)
    gone = listing.entries[2]
    assert (gone.version, gone.error_kind) == (MISSING_VERSION, "missing")  # a row already


def test_manifest_versions_are_taken_from_its_columns(tmp_path):
    rows = [{"uri": "s3://bkt/x.mp4", "etag": '"abc123"', "size": 42}]
    listing = list_inputs(write_manifest(tmp_path / "m.csv", "csv", rows))
    (obj,) = listing.entries
    assert (obj.uri, obj.size, obj.version) == ("s3://bkt/x.mp4", 42, "abc123")  # no HEAD


def test_s3_prefix_and_s3_manifests_give_the_same_objects(bucket, vdir, tmp_path):
    prefix = upload_dir(vdir, bucket, "in")
    from_prefix = list_inputs(prefix)
    assert [o.uri.rsplit("/", 1)[-1] for o in from_prefix.entries] == ["a.MKV", "b.mp4"]
    # without the trailing slash it still means the "directory"
    assert list_inputs(prefix.rstrip("/")).entries == from_prefix.entries
    uris = [o.uri for o in from_prefix.entries]
    for fmt, suffix in (("parquet", ".parquet"), ("csv", ".csv"), ("jsonl", ".jsonl")):
        local = write_manifest(tmp_path / f"m{suffix}", fmt, [{"uri": u} for u in uris * 2])
        key = f"manifests/m{suffix}"
        s3_client().upload_file(local, bucket, key)
        listing = list_inputs(f"s3://{bucket}/{key}")
        assert listing.entries == from_prefix.entries  # same ETags via HEAD
        assert listing.duplicates == 2


def test_s3_inventory_style_bucket_and_key_columns(bucket, vdir, tmp_path):
    upload_dir(vdir, bucket, "in")
    rows = [{"bucket": bucket, "key": "in/b.mp4"}, {"bucket": bucket, "key": "in/a.MKV"}]
    listing = list_inputs(write_manifest(tmp_path / "inv.parquet", "parquet", rows))
    assert [o.uri for o in listing.entries] == [f"s3://{bucket}/in/b.mp4", f"s3://{bucket}/in/a.MKV"]
    assert all(o.version and o.size == 10 for o in listing.entries)


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: str(d / "nothing-here"), "input not found"),
        (lambda d: str(d / "missing.parquet"), "manifest not found"),
        (lambda d: write_manifest(d / "bad.csv", "csv", [{"url": "x"}]), "needs a 'uri' column"),
        (lambda d: (d / "junk.parquet").write_bytes(b"not parquet") and str(d / "junk.parquet"),
         "cannot read manifest"),
        (lambda d: (d / "empty").mkdir() or str(d / "empty"), "no video files"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, make, needle):
    with pytest.raises(ListingError) as info:
        list_inputs(make(tmp_path))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_big_manifest_streams_in_chunks_and_counts_bad_rows(tmp_path):
    from pipeline.listing import ListingStats, iter_inputs

    rows = [{"uri": f"s3://bkt/v{i % 2500}.mp4", "etag": f"e{i % 2500}", "size": 1}
            for i in range(3000)] + [{"uri": "", "etag": "x", "size": 1}]
    manifest = write_manifest(tmp_path / "big.parquet", "parquet", rows)
    stats = ListingStats()
    chunks = iter_inputs(manifest, stats, rows=1000)
    first = next(chunks)
    assert first.num_rows == 1000 and stats.listed == 1000  # nothing more read yet
    rest = list(chunks)
    assert sum(c.num_rows for c in rest) == 1500
    assert (stats.listed, stats.duplicates, stats.invalid_rows) == (2500, 500, 1)


def test_empty_s3_prefix_is_an_error(bucket):
    with pytest.raises(ListingError, match="no video files"):
        list_inputs(f"s3://{bucket}/nothing/")
