"""The Ray a run uses: joined or started, stopped at the end, and started beside the plan.

This module imports Ray alone (not torch, not Ray Data), so a command can start
Ray before it imports the rest: a local Ray takes 3-4 s to start, mostly in
its own processes, while importing torch, torchvision and Ray Data and
loading the model keep one thread of the driver busy for about as long. Done
one after the other, each waited for the other (`while_ray_starts`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def init_ray() -> bool:
    """Join RAY_ADDRESS's cluster, or start a quiet local one; True if started here.

    "local" unless RAY_ADDRESS says otherwise: a bare `ray.init()` would join whatever
    cluster `ray start` runs on this machine (another user's, on a shared box).
    RAY_ADDRESS=auto joins that one on purpose."""
    import ray

    if ray.is_initialized():
        return False
    # worker output (FFmpeg noise, actor tracebacks) stays in Ray's log files, not the console
    ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR)
    return True


def stop_ray() -> None:
    """`ray.shutdown()` of the Ray `init_ray` started or joined, less a second lost on the
    autoscaler monitor of a local one.

    ray.shutdown stops the GCS first, then sends the monitor SIGTERM; the monitor's handler
    tries to report its end to the GCS that is gone, and Ray kills it a second later (Ray
    2.60: one second of every run's end). A local one-node Ray has no nodes for the monitor
    to clean up, so it is stopped first, at once. (A driver that joined a cluster holds no
    process of it: nothing to stop there.)"""
    import ray
    from ray._private import ray_constants

    node = getattr(ray._private.worker, "_global_node", None)  # private: absent, no harm
    for info in getattr(node, "all_processes", {}).get(ray_constants.PROCESS_TYPE_MONITOR, []):
        info.process.kill()
        info.process.wait(timeout=5)
    ray.shutdown()


def while_ray_starts(work: Callable[[], T]) -> tuple[T, bool]:
    """Run `work()` (the imports and the plan) in a thread while this thread starts Ray;
    its result, and whether Ray was started here (the caller then stops it: `stop_ray`).

    Ray starts in the calling thread because the processes of a local Ray die with the
    thread that started them (Linux's parent-death signal): it must be the thread that
    outlives the run. If `work` fails, the Ray started here is stopped before its error
    is raised. A run that turns out to have nothing to label has then started Ray for
    nothing: a few CPU-seconds beside its plan, and 0.3 s to stop it."""
    with ThreadPoolExecutor(1, thread_name_prefix="tsm-plan") as pool:
        working = pool.submit(work)
        try:
            started = init_ray()
        except BaseException:
            working.result()  # its error first, if it has one: a bad model beats a Ray error
            raise
        try:
            return working.result(), started
        except BaseException:
            if started:
                stop_ray()
            raise
