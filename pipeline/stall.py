"""Watching a stream that must keep moving: the driver's loop over the job's output.

Ray restarts a model actor that crashes (a segfault, an out-of-memory kill)
and retries its batch without limit; an actor that crashes on every try
would hold a nightly job forever with nothing to show. The driver consumes
the stream through `drain`, which calls back every fraction of a second even
while no item comes, and a `StallWatch` ends the job with `JobStalled` once
the job's progress has not moved for the limit: committed parts are kept,
and a rerun resumes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class JobStalled(RuntimeError):
    """No progress for longer than the stall limit."""


class StallWatch:
    """Raises JobStalled from `check()` when the observed value has not changed for long."""

    def __init__(self, timeout_s: float, what: str = "progress"):
        self.timeout_s = timeout_s
        self.what = what
        self._value: Hashable = object()
        self._since = time.monotonic()

    def observe(self, value: Hashable) -> None:
        if value != self._value:
            self._value, self._since = value, time.monotonic()

    def check(self) -> None:
        if time.monotonic() - self._since > self.timeout_s:
            raise JobStalled(f"no {self.what} for {self.timeout_s:g} s")


def drain(items: Iterable[T], on_tick: Callable[[], None], tick_s: float = 0.5) -> Iterator[T]:
    """Yield from `items`, calling `on_tick()` after each item and every `tick_s` in between.

    `on_tick` may raise (a stall, a lost lease) to end the stream. `items` is
    consumed in a daemon thread, since a blocking call inside it cannot be
    interrupted; once the consumer stops (an error, or simply leaving the
    loop) that thread closes `items` as soon as its pending call returns, so
    the engine behind the stream (Ray Data's executor) shuts down instead of
    running on for nobody.
    """
    box: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        it = iter(items)
        try:
            for item in it:
                if not hand_over((item, None)):
                    return
            hand_over((_DONE, None))
        except BaseException as e:  # raised again in the consumer
            hand_over((_DONE, e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    threading.Thread(target=pump, name="stream-pump", daemon=True).start()
    try:
        while True:
            try:
                item, error = box.get(timeout=tick_s)
            except queue.Empty:
                on_tick()
                continue
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
            on_tick()
    finally:
        stop.set()
