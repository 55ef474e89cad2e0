"""The stall limit on the label job's output stream."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.stall import JobStalled, no_stall


def slow(items, delays):
    for item, delay in zip(items, delays, strict=True):
        time.sleep(delay)
        yield item


def test_items_pass_through_in_order():
    assert list(no_stall(iter(range(50)), timeout_s=5)) == list(range(50))


def test_a_step_over_the_limit_ends_the_stream():
    got = []
    with pytest.raises(JobStalled, match=r"no batch for 0\.3 s"):
        for item in no_stall(slow("abc", [0, 0, 3]), timeout_s=0.3, what="batch"):
            got.append(item)
    assert got == ["a", "b"]


def test_the_sources_own_error_is_raised_as_is():
    def broken():
        yield 1
        raise ValueError("disk on fire")

    with pytest.raises(ValueError, match="disk on fire"):
        list(no_stall(broken(), timeout_s=5))


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

    with pytest.raises(JobStalled):
        list(no_stall(source(), timeout_s=0.3))
    # closed after its pending step returns, not left running for nobody
    assert closed.wait(5)
