"""A time limit on each step of a stream, so a job that stops making progress ends.

Ray restarts a model actor that crashes (a segfault, an out-of-memory kill)
and retries its batch without limit; an actor that crashes on every try
would hold a nightly job forever with nothing to show. The label job reads
its output stream through `no_stall`, which ends the job with `JobStalled`
once no batch has come out for the limit: parts committed so far are kept,
and a rerun resumes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class JobStalled(RuntimeError):
    """No output for longer than the stall limit."""


def no_stall(items: Iterable[T], timeout_s: float, what: str = "output") -> Iterator[T]:
    """Yield from `items`, raising JobStalled if the next item takes over `timeout_s`.

    `items` is consumed in a daemon thread, since a blocking call inside it
    cannot be interrupted. Once the consumer stops (a stall, an error, or
    simply leaving the loop) that thread closes `items` as soon as its pending
    call returns, so the engine behind the stream (Ray Data's executor) shuts
    down instead of running on for nobody.
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
                item, error = box.get(timeout=timeout_s)
            except queue.Empty:
                raise JobStalled(f"no {what} for {timeout_s:g} s") from None
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
