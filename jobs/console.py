"""What the commands show, and where: results on stdout, everything else on stderr or a log.

The conventions every `tsm` command follows:

- **stdout carries results only** (a summary, a table, with `--json` one JSON
  value), so `tsm ... --json | jq` works. While a command runs, Python's
  `sys.stdout` points at stderr (see `TsmCommand`): a library that prints
  (MLflow's "View run ..." lines with a tracking server, for one) cannot mix
  its lines into the results. A command prints its results with `out` or on
  `results_console()`.
- **progress and notes go to stderr**; Ray's, MLflow's and FFmpeg's own lines
  go to a log file (`to_log`) whose path the command names.
- **an error is one line on stderr**, `error: ...`, with exit code 2 for a
  flag, an input, an output or a model that cannot be used, and 1 (plus the
  log file with the traceback) when the job itself failed.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import typer
from typer.core import TyperCommand

EXIT_BAD_INPUT = 2  # a flag, an input, an output or a model that cannot be used
EXIT_FAILED = 1  # the job itself failed (the message names the log with details)
EXIT_INTERRUPTED = 130

_results: IO[str] | None = None  # the real stdout while a command runs
_terminal_fd: int | None = None  # fd 2 as it was before `to_log` pointed it at a log


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print `error: message` (one line) on stderr; returns the Exit to raise."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return typer.Exit(code=code)


# ------------------------------------------------------------------ stdout: results only
def results_stream() -> IO[str]:
    """Where results go: the command's stdout (not `sys.stdout`, which points at stderr)."""
    return _results if _results is not None else sys.stdout


def out(text: str = "") -> None:
    """Print one result line on stdout."""
    typer.echo(text, file=results_stream())


def results_console(**options: Any):
    """A rich Console on stdout, for results drawn as tables or with styles."""
    from rich.console import Console

    return Console(file=results_stream(), **options)


@contextmanager
def stdout_for_results() -> Iterator[None]:
    """While inside, Python's `sys.stdout` is stderr and `out` writes to the real stdout."""
    global _results
    saved = _results
    _results = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _results = saved


class TsmCommand(TyperCommand):
    """A `tsm` command: its callback runs with `stdout_for_results` (help and parsing do not)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as e:  # some usage errors come without the command's
            if getattr(e, "ctx", None) is None:  # context: give it, for the help to name
                e.ctx = ctx
            raise

    def invoke(self, ctx):
        with stdout_for_results():
            return super().invoke(ctx)


# ------------------------------------------------------------------ stderr: notes and a log
def note(text: str) -> None:
    """A line for the person watching (what is happening), on stderr."""
    typer.echo(text, err=True)


def log_file(command: str) -> Path:
    """A fresh log path for one run of `command` in the temp directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"tsm-{command}-{stamp}-{os.getpid()}.log"


@contextmanager
def to_log(path: Path) -> Iterator[None]:
    """Point fd 2 (Python's and native code's stderr) at `path` for the duration.

    The terminal's stderr stays reachable through `terminal_stderr` (the
    progress display draws there).
    """
    global _terminal_fd
    sys.stderr.flush()
    saved = os.dup(2)
    outer = _terminal_fd
    if outer is None:
        _terminal_fd = saved
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            _terminal_fd = outer


stderr_to = to_log  # the older name


def terminal_stderr() -> IO[str]:
    """The stderr the user sees, also inside `to_log`. Close it after use.

    Where `sys.stderr` is not fd 2 (a test's captured stream), that stream.
    """
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        real = False
    fd = _terminal_fd if _terminal_fd is not None else 2
    if not real:
        return _Unclosed(sys.stderr)
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")


class _Unclosed(io.TextIOBase):
    """A stream that forwards writes and ignores close (so callers may always close)."""

    def __init__(self, stream: IO[str]):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()


# ------------------------------------------------------------------ progress displays
def progress_display(stream: IO[str], *columns: Any, **options: Any):
    """A rich Progress drawn on `stream` (the terminal's stderr) that leaves `sys.stdout` and
    `sys.stderr` alone: rich would otherwise route what libraries print meanwhile (Ray's
    warnings, say) to the terminal, around the log file."""
    from rich.console import Console
    from rich.progress import Progress

    return Progress(*columns, console=Console(file=stream), redirect_stdout=False,
                    redirect_stderr=False, **options)


class ProgressBar:
    """The label job's progress on stderr, fed by its callbacks.

    It names the phase the job is in (waiting for the output, reading the
    output, listing, starting Ray, loading the model, labelling, finishing)
    from the moment the job starts, so a minute of start-up on a cluster never
    looks like a hang; the total appears once the listing is complete. The job
    changes `Progress.phase` without calling back, so the display reads the
    job's `Progress` object each time it redraws (4 times a second).
    """

    def __init__(self, enabled: bool, console=None):
        self.enabled = enabled
        self._console = console  # a rich Console (tests); default: the terminal's stderr
        self._stream: IO[str] | None = None
        self._progress = None
        self._task = None
        self._source = None  # the job's pipeline.progress.Progress

    def __enter__(self) -> ProgressBar:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = self

        class LiveProgress(Progress):
            def get_renderables(self):
                bar._sync()
                yield from super().get_renderables()

        console = self._console
        if console is None:
            self._stream = terminal_stderr()
            console = Console(file=self._stream)
        if not console.is_terminal:  # a file or a pipe: a transient display leaves nothing
            return self  # but a stray blank line there
        self._progress = LiveProgress(
            TextColumn("[bold]{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("errors {task.fields[errors]}"),
            TextColumn("{task.fields[rate]:.2f} videos/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            refresh_per_second=4,
            redirect_stdout=False,  # library lines go where fd 1 and 2 point, not around
            redirect_stderr=False,  # the log to the terminal
        )
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def start(self, p) -> None:
        """The job began: show its phase at once."""
        self._source = p
        if self._progress is not None:
            self._task = self._progress.add_task(p.phase, total=p.total, errors=0, rate=0.0)
            self._progress.refresh()

    def update(self, p) -> None:
        self._source = p
        self._sync()

    def refresh(self) -> None:
        """Redraw now (the display also redraws on its own)."""
        if self._progress is not None:
            self._progress.refresh()

    def _sync(self) -> None:
        p = self._source
        if self._progress is None or self._task is None or p is None:
            return
        self._progress.update(self._task, description=p.phase, total=p.total,
                              completed=p.done, errors=p.errors, rate=p.rate)
