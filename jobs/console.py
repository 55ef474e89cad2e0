"""What the jobs show on the console: a progress bar, and everything else in a log file.

Ray, MLflow and FFmpeg write start-up notes and native log lines on stderr;
the commands send fd 2 to a log file named at the end, and draw their own
progress on stdout, so the console tells the story and nothing else.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

EXIT_BAD_INPUT = 2  # a flag, an input, an output or a model that cannot be used
EXIT_FAILED = 1  # the job itself failed (the message names the log with details)
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print `error: message` (one line) on stderr; returns the Exit to raise."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return typer.Exit(code=code)


def log_file(command: str) -> Path:
    """A fresh log path for one run of `command` in the temp directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"tsm-{command}-{stamp}-{os.getpid()}.log"


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Point fd 2 (Python's and native code's stderr) at `path` for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class ProgressBar:
    """A rich progress display fed by the job's callbacks (drawn on stdout).

    It names the phase the job is in (waiting for the output, listing, starting
    Ray, loading the model, labelling), so a minute of start-up on a cluster
    never looks like a hang; the total appears once the listing is complete.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._progress = None
        self._task = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description:<18}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("errors {task.fields[errors]}"),
                TextColumn("{task.fields[rate]:.2f} videos/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=sys.stdout),
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start(self, p) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(p.phase, total=p.total, errors=0, rate=0.0)

    def update(self, p) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=p.phase, total=p.total,
                                  completed=p.done, errors=p.errors, rate=p.rate)
