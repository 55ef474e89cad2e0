"""Run calls in a long-lived child process, so a crash or a hang costs one call.

FFmpeg can segfault or spin on a hostile file. Inside a Ray task either would
take the whole task down (and Ray Data retries failed tasks without end), so
the decode stage runs each video in a child process of its own worker: a
crash surfaces as `ChildCrashed`, a hang as `ChildTimeout` after the child is
killed, and the next call starts a fresh child. The child is started with
`subprocess` (fork + exec), not `multiprocessing`'s fork, which is unsafe in
Ray's multi-threaded workers, nor its spawn, which re-runs the parent's
`__main__`.

Calls and results travel as length-prefixed pickles over the child's stdin and
stdout. Both ends are this package's own code, so nothing untrusted is ever
unpickled. A result's arrays (a clip's frames: 22 MB at 720p) travel out of
band (pickle protocol 5): written from the array's own memory and read into
the buffer the caller's array then uses, so neither side copies them. The
child copied them twice before, and under its memory cap that extra room
made ~1 video in 500 of a long run fail with a MemoryError in the child
(decoder_crash rows). With a 1 MiB pipe, handing on a 720p clip costs the
caller ~6 ms of CPU (was ~13).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from pipeline.errors import one_line

_HEADER = struct.Struct("<Q")  # a call's length; a result's buffer lengths
_RESULT = struct.Struct("<QQ")  # a result: its pickle's length, how many buffers follow
PIPE_BYTES = 1 << 20  # the results' pipe (Linux's default pipe-max-size): 16x fewer wake-ups
START_TIMEOUT_S = 120.0  # importing torch or PyAV on a loaded machine
# A child whose data segment is past this share of its cap after a call answers, then ends
# (the next call starts a fresh one). glibc and FFmpeg keep what they once allocated
# (heap, thread stacks, frame pools), so a long-lived decoding child creeps toward its
# cap (500-760 MiB of a 908 MiB cap over 30-330 upload-like clips), and near it FFmpeg
# could no longer start its threads (EAGAIN): every later video of that child failed.
RETIRE_SHARE = 0.75


class ChildError(RuntimeError):
    """The call raised inside the child; the message names the exception."""

    def __init__(self, message: str, exception_type: str = ""):
        super().__init__(message)
        self.exception_type = exception_type


class ChildCrashed(RuntimeError):
    """The child died during the call (a signal such as SIGSEGV, or an exit)."""


class ChildTimeout(TimeoutError):
    """The call did not finish in time; the child was killed."""


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class ChildProcess:
    """One child Python process that runs `fn(*args)` calls one at a time.

    `warm` names modules the child imports before its first call, so that
    call is not slowed (or timed out) by imports. `memory_limit` (bytes) caps
    the child's data segment (RLIMIT_DATA): past it allocations fail, so a
    runaway decode ends in a MemoryError (or a crash) of the child alone. The
    child inherits the environment as it is when the child starts; if
    `os.environ` has changed since, the next call restarts it, so credentials
    and endpoints are never stale.
    """

    def __init__(self, warm: tuple[str, ...] = (), memory_limit: int | None = None) -> None:
        self.warm = warm
        self.memory_limit = memory_limit
        self._proc: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        self.close()
        self._env = dict(os.environ)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.isolation", str(self.memory_limit or 0),
             *self.warm],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # the child's stderr (FFmpeg's noise that escapes capture) goes where ours does
            env=self._env,
        )
        assert self._proc.stdout is not None
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux; a refusal keeps the 64 KiB default
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        # the start-up (imports) is not charged to the first call's time limit
        status, _, _ = self._receive(START_TIMEOUT_S)
        if status != "ready":
            raise ChildCrashed(f"the child process did not start ({status})")

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
        """`fn(*args)` in the child; raises ChildError, ChildCrashed or ChildTimeout."""
        if self._proc is None or self._proc.poll() is not None or self._env != os.environ:
            self._start()
        assert self._proc is not None and self._proc.stdin is not None
        message = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._proc.stdin.write(_HEADER.pack(len(message)))
            self._proc.stdin.write(message)
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._crashed() from None
        status, value, retired = self._receive(timeout)
        if retired:  # it ends itself after this answer
            self.close()
        if status == "error":
            raise ChildError(*value)
        return value

    def _crashed(self) -> ChildCrashed:
        assert self._proc is not None
        code = self._proc.wait()
        self._proc = None
        return ChildCrashed(f"the decoding process {_describe_exit(code)}")

    def _read_exactly(self, n: int, deadline: float) -> bytearray:
        """`n` bytes from the child, read straight into the buffer returned."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buffer = bytearray(n)
        view, done = memoryview(buffer), 0
        while done < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            got = os.readv(fd, [view[done:]])
            if not got:
                raise EOFError
            done += got
        return buffer

    def _receive(self, timeout: float) -> tuple[str, Any, bool]:
        """(status, value, whether the child ends itself after this answer)."""
        deadline = time.monotonic() + timeout
        try:
            size, count = _RESULT.unpack(self._read_exactly(_RESULT.size, deadline))
            data = self._read_exactly(size, deadline)
            buffers = []
            for _ in range(count):
                (length,) = _HEADER.unpack(self._read_exactly(_HEADER.size, deadline))
                buffers.append(self._read_exactly(length, deadline))
            return pickle.loads(data, buffers=buffers)
        except TimeoutError:
            self.close()
            raise ChildTimeout(f"no result within {timeout:g} s") from None
        except EOFError:
            raise self._crashed() from None

    def close(self) -> None:
        """Kill the child (if any); the next call starts a new one."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _data_bytes() -> int:
    """This process's data segment (VmData), what RLIMIT_DATA caps."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData"))


def _serve() -> None:
    """The child's loop: read a call, run it, write back ("ok", value) or ("error", text)."""
    # Keep the protocol pipe private: anything the called code prints to stdout
    # (a library's print, FFmpeg writing to fd 1) goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer

    def send(status: str, value: Any, retire: bool = False) -> None:
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps((status, value, retire), protocol=5,
                            buffer_callback=buffers.append)
        out.write(_RESULT.pack(len(data), len(buffers)))
        out.write(data)
        for buffer in buffers:  # written from the arrays' own memory
            raw = buffer.raw()
            out.write(_HEADER.pack(raw.nbytes))
            out.write(raw)
        out.flush()

    limit, modules = int(sys.argv[1]), sys.argv[2:]
    if limit:  # the caller's memory cap, before anything big is imported
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    for module in modules:  # the caller's `warm` modules
        importlib.import_module(module)
    send("ready", None)
    while header := inp.read(_HEADER.size):
        (size,) = _HEADER.unpack(header)
        fn, args = pickle.loads(inp.read(size))
        try:
            result = ("ok", fn(*args))
        except Exception as e:
            result = ("error", (one_line(e, with_type=True), type(e).__name__))
        retire = bool(limit) and _data_bytes() > RETIRE_SHARE * limit
        send(*result, retire)
        if retire:
            return


if __name__ == "__main__":
    _serve()
