"""The decoding child process: a crash or a hang costs one call, never the caller."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_decode_stage import black_hole  # noqa: F401  (fixture)

from pipeline import decode_stage
from pipeline.contract import ErrorKind
from pipeline.decode_stage import DecodeSpec, decode_bounded
from pipeline.fetch_decode import FetchDecode
from pipeline.isolation import ChildCrashed, ChildError, ChildProcess, ChildTimeout
from pipeline.store import ObjectInfo


@pytest.fixture
def child():
    c = ChildProcess()
    yield c
    c.close()


def test_calls_run_in_one_reused_child(child):
    assert child.call(sum, [1, 2, 3], timeout=60) == 6
    pid = child.pid
    assert pid != os.getpid()
    assert child.call(os.getpid, timeout=10) == pid


def test_a_crash_is_reported_and_the_next_call_gets_a_new_child(child):
    child.call(sum, [1], timeout=60)
    first = child.pid
    with pytest.raises(ChildCrashed, match="SIGABRT"):
        child.call(os.abort, timeout=10)
    assert child.call(sum, [2, 2], timeout=60) == 4
    assert child.pid != first


def test_a_hang_is_cut_off_and_the_child_killed(child):
    child.call(sum, [1], timeout=60)
    hung = child.pid
    started = time.monotonic()
    with pytest.raises(ChildTimeout, match=r"0\.5 s"):
        child.call(time.sleep, 30, timeout=0.5)
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):  # killed, not left running
        os.kill(hung, 0)
    assert child.call(sum, [3], timeout=60) == 3


def test_an_exception_in_the_call_is_an_error_not_a_crash(child):
    with pytest.raises(ChildError, match="ValueError: invalid literal"):
        child.call(int, "x", timeout=60)
    pid = child.pid
    assert child.call(int, "7", timeout=10) == 7 and child.pid == pid


def test_a_child_past_its_memory_cap_fails_alone():
    child = ChildProcess(memory_limit=400 * 1024 * 1024)
    try:
        with pytest.raises(ChildError) as info:
            child.call(bytearray, 2 * 1024**3, timeout=60)  # 2 GiB under a 400 MiB cap
        assert info.value.exception_type == "MemoryError"
        assert child.call(sum, [1, 2], timeout=60) == 3  # and it goes on working
    finally:
        child.close()


@pytest.mark.parametrize("warm, imported", [((), False), (("colorsys",), True)])
def test_warm_modules_are_imported_before_the_first_call(warm, imported):
    child = ChildProcess(warm=warm)
    try:
        assert child.call(eval, "'colorsys' in __import__('sys').modules", timeout=60) is imported
    finally:
        child.close()


def test_printing_in_the_child_does_not_break_the_protocol(child):
    assert child.call(print, "noise on stdout", timeout=60) is None
    assert child.call(sum, [5], timeout=10) == 5


def test_a_changed_environment_restarts_the_child(child, monkeypatch):
    child.call(sum, [1], timeout=60)
    pid = child.pid
    monkeypatch.setenv("TSM_TEST_MARKER", "1")
    assert child.call(os.getenv, "TSM_TEST_MARKER", timeout=60) == "1"
    assert child.pid != pid


@pytest.mark.usefixtures("black_hole")
def test_a_decoder_that_dies_mid_video_is_one_error_row():
    # the fetch hangs on a server that never answers; meanwhile the decoding process
    # is killed with SIGSEGV, as FFmpeg would be by a hostile file
    spec = DecodeSpec(FetchDecode(4, "uniform", 3840 * 2160, 64 << 20), 40, 32, timeout_s=60)
    child = decode_stage._child(spec)
    child.close()
    child.call(sum, [0], timeout=120)  # started, so the kill lands mid-video
    pid = child.pid

    def segfault_the_decoder():
        time.sleep(1.0)  # let the call reach the hung read
        os.kill(pid, signal.SIGSEGV)

    killer = threading.Thread(target=segfault_the_decoder)
    killer.start()
    r = decode_bounded(ObjectInfo("s3://stalled/v.mp4", 5000, "etag"), spec)
    killer.join()
    assert (r.ok, r.error_kind) == (False, ErrorKind.DECODER_CRASH)
    assert "SIGSEGV" in r.error_message



def test_arrays_come_back_whole_and_writable(child):
    """Results with arrays (sent out of band, read straight into their buffers) come back
    equal, of the same type and layout, and writable, among other values."""
    import numpy as np

    frames = np.arange(8 * 72 * 128 * 3, dtype=np.uint8).reshape(8, 72, 128, 3)
    want = {"frames": frames, "strided": frames[:, ::2, ::3], "empty": np.zeros((0, 3)),
            "floats": np.linspace(0, 1, 7, dtype=np.float32), "text": "é", "n": 3}
    got = child.call(dict, want, timeout=60)  # the child's copy of the dict, sent back
    assert got.keys() == want.keys() and (got["text"], got["n"]) == ("é", 3)
    for key in ("frames", "strided", "empty", "floats"):
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape
        np.testing.assert_array_equal(got[key], want[key])
    got["frames"][0, 0, 0] = 7  # the caller may resize or crop in place
    assert child.call(sum, [1, 2], timeout=60) == 3  # the stream stays in step


def test_a_large_result_fits_a_cap_that_two_copies_would_not():
    """The child sends a result's arrays from their own memory: a 200 MB array comes back
    from a child whose cap leaves room for it once, not twice more."""
    import numpy as np

    base = _vm_data_kib(ChildProcess(warm=("numpy",)))
    size = 200 * 1024 * 1024
    capped = ChildProcess(warm=("numpy",), memory_limit=base * 1024 + size + 120 * 1024 * 1024)
    try:
        got = capped.call(np.full, size, 7, np.uint8, timeout=120)
        assert got.nbytes == size and got[-1] == 7
    finally:
        capped.close()


def test_a_child_near_its_cap_after_a_call_answers_then_makes_way():
    """Memory a child keeps after a call (decoders' pools, thread stacks, heap) counts
    against its cap: past three quarters of it the child answers, then ends, and the next
    call gets a fresh child; a child well under its cap stays."""
    base_kib = _vm_data_kib(ChildProcess())
    cap = base_kib * 1024 + 400 * 1024 * 1024
    child = ChildProcess(memory_limit=cap)
    try:
        assert child.call(sum, [1, 2], timeout=60) == 3
        first = child.pid
        assert child.call(sum, [3], timeout=60) == 3 and child.pid == first  # stays
        # the child allocates 350 MB and keeps it (a module attribute outlives the call)
        assert child.call(exec, "import os; os.kept = bytearray(350 << 20)", timeout=60) is None
        assert child.call(sum, [4], timeout=60) == 4
        assert child.pid != first
    finally:
        child.close()


def _vm_data_kib(child: ChildProcess) -> int:
    try:
        status = child.call(Path.read_text, Path("/proc/self/status"), timeout=60)
    finally:
        child.close()
    return next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmData"))
