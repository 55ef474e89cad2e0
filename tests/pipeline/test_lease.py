"""One writer per output: a second run is refused, a dead holder's lease passes on."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.lease import LeaseLost, OutputBusy
from pipeline.store import store_for


def lease(output: str, run_id: str, **kw):
    store = store_for(output)
    made = store.lease(output, run_id)
    for k, v in kw.items():
        setattr(made, k, v)
    return made


def test_local_second_run_is_refused_with_the_holder_named(tmp_path):
    out = str(tmp_path / "labels")
    with lease(out, "run-a") as first:
        with pytest.raises(OutputBusy, match=r"being written by run run-a \(host .*, pid \d+"):
            lease(out, "run-b").acquire()
        assert first.holds() and not lease(out, "run-b").holds()
    with lease(out, "run-b") as second:  # released: the next run gets it
        assert not second.taken_from_dead


HOLD = textwrap.dedent("""
    import sys, time
    from pipeline.store import store_for
    held = store_for(sys.argv[1]).lease(sys.argv[1], "run-killed").acquire()
    print("held", flush=True)
    time.sleep(600)
""")


def test_local_lease_of_a_killed_run_is_free_at_once_and_marked_dead(tmp_path):
    out = str(tmp_path / "labels")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, out], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(OutputBusy, match="run-killed"):
        lease(out, "run-b").acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with lease(out, "run-b") as taken:  # the kernel dropped the flock with the process
        assert taken.taken_from_dead and taken.holds()


def test_s3_lease_refuses_a_second_run_and_is_taken_over_once_expired(bucket):
    out = f"s3://{bucket}/labels/"
    first = lease(out, "run-a", ttl_s=1.0).acquire()
    with pytest.raises(OutputBusy, match="run-a"):
        lease(out, "run-b").acquire()
    first._stop.set()  # the holder "dies": no more renewals
    first._renewer.join()
    time.sleep(1.2)
    second = lease(out, "run-b").acquire()
    assert second.taken_from_dead and second.holds() and not first.holds()
    with pytest.raises(OutputBusy):
        lease(out, "run-c").acquire()
    second.release()
    third = lease(out, "run-c").acquire()  # a clean release: nothing was dead
    assert not third.taken_from_dead
    first._etag and first.release()  # deleting with a stale ETag leaves run-c's lease alone
    assert third.holds()
    third.release()


def test_s3_holder_that_lost_its_lease_finds_out(bucket):
    out = f"s3://{bucket}/labels/"
    slow = lease(out, "run-slow", ttl_s=0.4).acquire()  # renews every 0.1 s
    from pipeline.store.s3 import s3_client

    # someone replaces the lease (as a takeover would after an expiry)
    s3_client().put_object(Bucket=bucket, Key="labels/_lock.json", Body=b'{"run_id": "x"}')
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            slow.check()
        except LeaseLost:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the lost lease was never noticed")
    slow.release()


def test_an_output_that_cannot_be_written_is_refused_before_anything_runs(tmp_path):
    from pipeline.errors import LabelError

    (tmp_path / "file").write_text("x")
    with pytest.raises(LabelError, match="cannot write to output"):
        lease(str(tmp_path / "file" / "labels"), "run-a").acquire()
