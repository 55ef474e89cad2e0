"""The driver's watch over the job's stream: ticks while waiting, a stall limit, a clean stop."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.stall import JobStalled, StallWatch, drain


def slow(items, delays):
    for item, delay in zip(items, delays, strict=True):
        time.sleep(delay)
        yield item


def test_items_pass_through_in_order():
    assert list(drain(iter(range(50)), on_tick=lambda: None)) == list(range(50))


def test_ticks_come_while_waiting_and_after_each_item():
    ticks = []
    got = list(drain(slow("ab", [0, 0.55]), on_tick=lambda: ticks.append(time.monotonic()),
                     tick_s=0.1))
    assert got == ["a", "b"] and len(ticks) >= 5  # 2 items + waits of 0.1 s over 0.55 s


def test_a_watch_that_sees_no_change_stalls_the_stream():
    watch = StallWatch(0.3, "batch")
    got = []
    with pytest.raises(JobStalled, match=r"no batch for 0\.3 s"):
        for item in drain(slow("abc", [0, 0, 3]), on_tick=watch.check, tick_s=0.05):
            watch.observe(item)
            got.append(item)
    assert got == ["a", "b"]


def test_a_changing_value_keeps_the_watch_quiet():
    watch = StallWatch(0.2)
    for i in range(6):
        watch.observe(i)
        time.sleep(0.05)
        watch.check()
    time.sleep(0.25)
    with pytest.raises(JobStalled):
        watch.check()


def test_the_sources_own_error_is_raised_as_is():
    def broken():
        yield 1
        raise ValueError("disk on fire")

    with pytest.raises(ValueError, match="disk on fire"):
        list(drain(broken(), on_tick=lambda: None))


def test_the_source_is_closed_once_the_consumer_gives_up():
    closed = threading.Event()

    def source():
        try:
            yield 1
            time.sleep(1.0)  # the stall
            yield 2
            yield 3
        finally:
            closed.set()

    watch = StallWatch(0.3)
    with pytest.raises(JobStalled):
        for item in drain(source(), on_tick=watch.check, tick_s=0.05):
            watch.observe(item)
    # closed after its pending step returns, not left running for nobody
    assert closed.wait(5)
