"""How far a running job is: what the driver shows, and the tally the model actors report to.

The rows themselves never reach the driver (workers write the parts), so the
model actors report each batch's outcome to a small Ray actor, the `Tally`;
the driver reads it twice a second for the progress display and for the
stall guard (`pipeline.stall`).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Progress:
    """Where a running job stands (for a progress display)."""

    # waiting for the output (its lease), reading the output, listing, starting Ray (the
    # stages' measurement and the MLflow run go on beside it), loading the model,
    # labelling, finishing
    phase: str = "planning"
    listed: int = 0  # inputs listed so far
    skipped: int = 0  # already labelled by an earlier run
    done: int = 0  # labelled in this run (ok + errors)
    ok: int = 0
    errors: int = 0
    written: int = 0  # rows in committed parts
    actors: int = 0
    actors_ready: int = 0  # model actors that have loaded the model
    listing_done: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def total(self) -> int | None:
        """Videos to label in this run, once the listing is complete."""
        return self.listed - self.skipped if self.listing_done else None

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Videos per second since labelling started."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Tally:
    """A Ray actor (see `new_tally`): model actors report in, the driver reads."""

    def __init__(self) -> None:
        self.ready = 0
        self.ok = 0
        self.errors: Counter[str] = Counter()

    def actor_ready(self) -> None:
        self.ready += 1

    def add(self, ok: int, errors: dict[str, int]) -> None:
        self.ok += ok
        self.errors.update(errors)

    def read(self) -> tuple[int, int, dict[str, int]]:
        """(actors ready, videos ok, errors by kind)."""
        return self.ready, self.ok, dict(self.errors)


def on_this_node():
    """The scheduling strategy of the driver's helper actors (the feed's queue, the tally):
    on the driver's node, so they live and die with the driver and never with a worker node
    the cluster loses. (A default actor goes to any node with a free CPU: with a 0-CPU head,
    always a worker.)"""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def new_tally():
    """A Tally actor for one run, on the driver's node (no CPU reserved: it only counts)."""
    import ray

    return ray.remote(num_cpus=0)(Tally).options(scheduling_strategy=on_this_node()).remote()
