"""The label job on a Ray cluster of several nodes: a worker node lost mid-run, the driver killed.

A real multi-node Ray runs on this one machine (`ray.cluster_utils.Cluster`):
a head with 0 CPUs, like the head of the KubeRay manifests (it runs the driver
only), and `WORKERS` worker nodes of 1 CPU each, every node its own raylet,
object store and worker processes. The job runs in a subprocess joined to it
through `RAY_ADDRESS`, as on a real cluster, and reports its progress on
stdout. The tests take a node away while videos are being decoded (every
process of that node is killed, as when a machine dies), or SIGKILL the
driver, and then check the one contract that matters: the union of the
committed parts holds every input exactly once, with its expected verdict.

What "mid-run" means here is read from the nodes themselves: a worker node is
decoding once one of its Ray workers has a decoding child process
(`pipeline.isolation`), so the moment does not depend on how fast this
machine is.

Isolation from other Ray users of the machine: `Cluster` advertises itself in
`/tmp/ray/ray_current_cluster`, which any plain `ray.init()` on the machine
then joins (Ray's own rule); the fixture switches that off, and its shutdown
leaves that file alone.

Three tests here pin down bugs found on clusters and fixed (docs/scale.md):
the driver's helper actors on any node, the feed's blocks joined into one,
and stopping a feed whose queue actor died.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pytest
from conftest import output_rows

WORKERS = 3  # worker nodes, 1 CPU each
N_GOOD = 600  # enough that decoding outlasts start-up and the moment the node is taken away
BROKEN = {"empty.mp4": "empty", "text.mp4": "corrupt"}  # expected verdicts of the bad inputs
TOTAL = N_GOOD + len(BROKEN)
RUN_TIMEOUT_S = 400.0  # one job on a loaded 2-core machine, with a node lost on the way
STALL_S = 120.0  # the job's own stall guard (its default, 30 min, would outlast any test)

DRIVER = textwrap.dedent("""
    import json, os, sys
    from pipeline.job import run_label
    from pipeline.settings import LabelConfig
    from pipeline.sink import SinkConfig

    settings = json.loads(sys.argv[4])
    part_rows = settings.pop("part_rows")
    # a pipe of its own: Ray's log lines go to stdout from other threads, mid-line
    report = os.fdopen(int(sys.argv[5]), "w")
    last = [None]

    def on_progress(p):
        now = (p.phase, p.done, p.written)
        if now != last[0]:
            last[0] = now
            print("progress " + json.dumps({"phase": p.phase, "done": p.done,
                                            "written": p.written}), file=report, flush=True)

    s = run_label(LabelConfig(input=sys.argv[1], output=sys.argv[2], model=sys.argv[3],
                              sink=SinkConfig(max_rows=part_rows), **settings),
                  on_progress=on_progress)
    print("summary " + json.dumps({"listed": s.listed, "skipped": s.skipped, "ok": s.ok,
                                   "errors": s.errors, "parts": len(s.parts)}), file=report,
          flush=True)
""")


# ---------------------------------------------------------------------- processes
def _parents() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(pid: int) -> list[int]:
    children, out, todo = _parents(), [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------- the cluster
class MultiNode:
    """A head (0 CPUs: it runs the driver) and `WORKERS` 1-CPU worker nodes on this machine."""

    def __init__(self, temp_dir: str):
        import ray._common.utils
        import ray._private.utils
        from ray.cluster_utils import Cluster

        self.temp_dir = temp_dir
        # never advertise this cluster to other `ray.init()` calls on the machine (see the
        # module doc), nor delete what another cluster advertised there
        self._quiet = contextlib.ExitStack()
        self._quiet.enter_context(
            mock.patch.object(ray._private.utils, "write_ray_address", lambda *a, **k: None)
        )
        self._quiet.enter_context(
            mock.patch.object(ray._common.utils, "reset_ray_address", lambda *a, **k: None)
        )
        self.cluster = Cluster(initialize_head=True, head_node_args=self._node_args(num_cpus=0))
        self.workers: list = []
        self.removed = 0
        self.restore()

    def _node_args(self, **kw) -> dict:
        return dict(
            object_store_memory=100 * 1024 * 1024,
            include_dashboard=False,
            temp_dir=self.temp_dir,
            **kw,
        )

    @property
    def address(self) -> str:
        return self.cluster.address

    def restore(self) -> None:
        """Back to `WORKERS` live worker nodes (after a test took one away)."""
        while len(self.workers) < WORKERS:
            self.workers.append(self.cluster.add_node(**self._node_args(num_cpus=1)))
        self.cluster.wait_for_nodes()

    def name(self, node) -> str:
        return "head" if node is self.cluster.head_node else f"worker {node.node_id[:8]}"

    def actors(self) -> dict[str, list[str]]:
        """Live actors' class names by node id (from the GCS, no driver needed)."""
        out: dict[str, list[str]] = {}
        for actor in self.cluster.global_state.actor_table(None).values():
            if actor["State"] == "ALIVE":
                out.setdefault(actor["Address"]["NodeID"], []).append(actor["ActorClassName"])
        return out

    def restarts(self, class_part: str) -> list[tuple[str, int]]:
        """(node it ended on, times Ray restarted it) of each actor whose class name has
        `class_part`, live or dead, from the GCS: evidence of actors moved to other nodes."""
        return [
            (actor["Address"]["NodeID"][:8], actor.get("NumRestarts", 0))
            for actor in self.cluster.global_state.actor_table(None).values()
            if class_part in actor["ActorClassName"]
        ]

    def decoding(self, node) -> int:
        """Decoding child processes under the node's raylet (its workers' children)."""
        from ray._private import ray_constants

        procs = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET)
        if not procs:
            return 0
        return sum("pipeline.isolation" in _cmdline(p) for p in _descendants(procs[0].process.pid))

    def remove(self, node) -> None:
        """Kill every process of the node at once, as when its machine dies."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)
        self.removed += 1

    def shutdown(self) -> None:
        # not Cluster.shutdown: it also resets the internal KV of this process's own Ray
        # connection (the session's `ray_cluster`)
        for node in list(self.workers):
            self.cluster.remove_node(node)
        self.cluster.remove_node(self.cluster.head_node)
        self._quiet.close()


@pytest.fixture(scope="module")
def multinode():
    # a short folder: Ray's socket paths under it must stay within 107 bytes
    temp_dir = tempfile.mkdtemp(prefix="tsm-mn-", dir="/tmp")
    mn = MultiNode(temp_dir)
    try:
        yield mn
    finally:
        mn.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def many_videos(video_corpus, tmp_path_factory) -> Path:
    """`N_GOOD` distinct good videos (hard links to one small H.264 file) and two bad ones."""
    root = tmp_path_factory.mktemp("many")
    for i in range(N_GOOD):
        os.link(video_corpus["h264"], root / f"v{i:04d}.mp4")
    for name in BROKEN:
        shutil.copy(video_corpus[name], root / name)
    return root


# ---------------------------------------------------------------------- the job
class Driver:
    """`run_label` in a subprocess joined to the cluster; its progress lines read as they come."""

    def __init__(self, mn: MultiNode, videos: Path, out: Path, model: Path, **settings):
        settings = {
            "batch_size": 4,
            "videos_per_decode_task": 2,
            "part_rows": 10,
            "stall_timeout_s": STALL_S,
            **settings,
        }
        self.log = out.parent / f"driver-{time.monotonic_ns()}.log"
        report, child_end = os.pipe()
        with open(self.log, "w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    DRIVER,
                    str(videos),
                    str(out),
                    str(model),
                    json.dumps(settings),
                    str(child_end),
                ],
                env={**os.environ, "RAY_ADDRESS": mn.address},
                cwd=Path(__file__).parents[2],
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(child_end,),
            )
        os.close(child_end)  # the reader sees the end when the child closes its copy
        self._report = os.fdopen(report)
        self.started = time.monotonic()
        self.progress: dict = {"phase": "", "done": 0, "written": 0}
        self.summary: dict | None = None
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._report:
            self._lines.put(line)

    def poll(self) -> bool:
        """Take in what the driver printed; True while it runs."""
        while True:
            try:
                kind, _, body = self._lines.get_nowait().partition(" ")
            except queue.Empty:
                break
            if kind == "progress":
                self.progress = json.loads(body)
            elif kind == "summary":
                self.summary = json.loads(body)
        return self.proc.poll() is None

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            self.proc.wait(timeout=max(1.0, timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the job did not end within {timeout:g} s; its log: {self.tail()}")
        time.sleep(0.2)  # the reader thread's last lines
        self.poll()
        return self.proc.returncode

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def wait_until(what: str, cond, run: Driver, timeout: float = RUN_TIMEOUT_S):
    """Poll `cond()` until it returns something truthy; fail if the run ends or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = run.poll()
        if found := cond():
            return found
        if not alive:
            pytest.fail(
                f"the job ended (exit {run.proc.returncode}) before {what}; "
                f"progress {run.progress}; its log:\n{run.tail()}"
            )
        time.sleep(0.1)
    pytest.fail(f"no {what} within {timeout:g} s; progress {run.progress}")


class DecodingWorker:
    """Finds a worker node to take away once one has been decoding for `settle_s`, while rows
    are still to come: one that `prefer` picks if any (decoding or not), else the decoding one."""

    def __init__(
        self,
        mn: MultiNode,
        run: Driver,
        total: int,
        settle_s: float = 2.0,
        prefer=lambda node: False,
    ):
        self.mn, self.run, self.total, self.settle_s, self.prefer = mn, run, total, settle_s, prefer
        self.since: dict[str, float] = {}

    def __call__(self):
        now = time.monotonic()
        for node in self.mn.workers:
            if self.mn.decoding(node):
                self.since.setdefault(node.node_id, now)
            else:
                self.since.pop(node.node_id, None)
        if self.run.progress["written"] >= self.total:
            pytest.fail("every row was written before a node could be taken away mid-run")
        ready = [
            n for n in self.mn.workers if now - self.since.get(n.node_id, now) >= self.settle_s
        ]
        if not ready:
            return None
        return next((n for n in self.mn.workers if self.prefer(n)), ready[0])


def ray_data_reruns(mn: MultiNode, since: float) -> dict[str, list[str]]:
    """Ray Data tasks started more than once (operator, task index) in each dataset run since
    `since` (unix time), from Ray Data's own logs on the head: evidence of Ray's retries."""
    out = {}
    for log in Path(mn.temp_dir).glob("session_*/logs/ray-data/ray-data-dataset_*.log"):
        if log.stat().st_mtime < since:
            continue
        started = Counter(
            line.split("Executing map task of operator ", 1)[1].strip()
            for line in log.read_text(errors="replace").splitlines()
            if "Executing map task of operator " in line
        )
        out[log.name] = [f"{task} x{n}" for task, n in started.items() if n > 1]
    return out


def check_exactly_once(out: Path, videos: Path) -> pa.Table:
    """Every input has exactly one committed row, with its expected verdict."""
    table = output_rows(str(out))
    assert table is not None, "no part was committed"
    uris = table["video_uri"].to_pylist()
    twice = sorted(u for u, n in Counter(uris).items() if n > 1)
    assert not twice, f"{len(twice)} videos have more than one row, e.g. {twice[:3]}"
    want = sorted(str(p) for p in videos.iterdir())
    missing = sorted(set(want) - set(uris))
    assert not missing, f"{len(missing)} videos have no row, e.g. {missing[:3]}"
    assert len(uris) == len(want)
    for row in table.select(["video_uri", "status", "error_kind", "error_message"]).to_pylist():
        name = Path(row["video_uri"]).name
        expected = ("error", BROKEN[name]) if name in BROKEN else ("ok", None)
        assert (row["status"], row["error_kind"]) == expected, row
    return table


def run_to_the_end(mn, videos, out, model, first: Driver, **settings) -> tuple[int, dict | None]:
    """Wait for `first`; if it failed, rerun (the contract's promise) and return its summary."""
    rc = first.wait()
    if rc == 0:
        return rc, first.summary
    print(f"first run failed (exit {rc}); its log ends:\n{first.tail()}")
    again = Driver(mn, videos, out, model, **settings)
    assert again.wait() == 0, f"the rerun failed too; its log:\n{again.tail()}"
    return rc, again.summary


# ---------------------------------------------------------------------- the tests
@pytest.mark.slow
@pytest.mark.parametrize("role", ["decoding", "model actor"])
def test_a_worker_node_lost_mid_run_leaves_every_video_exactly_once(
    role, multinode, many_videos, tiny_model, tmp_path, mlflow_store
):
    """Take away a worker node while videos are being decoded: the node running a decode
    task, or the node of the model actor (`cpus_per_actor=1` puts it on a worker). The job
    finishes, or, if it cannot, a rerun does; either way every video is there once."""
    mn, out = multinode, tmp_path / "labels"
    settings = {"cpus_per_actor": 1.0} if role == "model actor" else {}
    run = Driver(mn, many_videos, out, tiny_model, **settings)
    try:
        if role == "model actor":

            def model_node():
                actors = mn.actors()
                on = [
                    n
                    for n in mn.workers
                    if any("ClipClassifier" in c for c in actors.get(n.node_id, []))
                ]
                # once the model is loaded (an actor lost in its constructor is another story:
                # see docs/scale.md) and videos are being decoded
                busy = any(mn.decoding(n) for n in mn.workers)
                ready = run.progress["phase"] == "labelling"
                return on[0] if on and busy and ready else None

            node = wait_until("a worker node holding the model actor", model_node, run)
        else:
            node = wait_until("a worker node decoding", DecodingWorker(mn, run, TOTAL), run)
        hosted = mn.actors().get(node.node_id, [])
        print(
            f"taking {mn.name(node)} away at {time.monotonic() - run.started:.1f} s, "
            f"progress {run.progress}, its actors {hosted}"
        )
        mn.remove(node)
        since = time.time()
        rc, summary = run_to_the_end(mn, many_videos, out, tiny_model, run, **settings)
        print(
            f"first run exit {rc}; summary of the last run {summary}; "
            f"Ray Data tasks run again: {ray_data_reruns(mn, since - 600)}; "
            f"model actors restarted: {mn.restarts('ClipClassifier')}"
        )
        check_exactly_once(out, many_videos)
    finally:
        if run.proc.poll() is None:
            run.kill()
        mn.restore()


@pytest.mark.slow
def test_the_driver_killed_mid_run_then_resumed_leaves_every_video_exactly_once(
    multinode, many_videos, tiny_model, tmp_path, mlflow_store
):
    mn, out = multinode, tmp_path / "labels"
    total = TOTAL
    run = Driver(mn, many_videos, out, tiny_model)
    try:
        wait_until("a committed part", lambda: list(out.rglob("part-*.parquet")), run)
        run.kill()
        print(f"driver killed at {time.monotonic() - run.started:.1f} s, progress {run.progress}")
    finally:
        if run.proc.poll() is None:
            run.kill()
    committed = output_rows(str(out))
    assert 0 < committed.num_rows < total, "the kill did not land mid-run"

    # Ray ends a dead driver's workers on every node (the rerun's grace period relies on it):
    # their decoding processes go with them
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(mn.decoding(n) for n in mn.workers):
        time.sleep(0.5)
    assert not any(mn.decoding(n) for n in mn.workers), "the dead driver's workers live on"

    again = Driver(mn, many_videos, out, tiny_model)
    assert again.wait() == 0, again.tail()
    # parts the dead run's last write tasks published after the kill count as done too
    assert again.summary["skipped"] >= committed.num_rows
    assert (
        again.summary["skipped"] + again.summary["ok"] + sum(again.summary["errors"].values())
        == total
    )
    check_exactly_once(out, many_videos)


@pytest.mark.slow
def test_losing_any_worker_node_does_not_end_the_run(
    multinode, many_videos, tiny_model, tmp_path, mlflow_store
):
    """The stricter promise: a run survives the loss of a worker node (spot instances,
    scale-down), whichever node it is, with no rerun needed. The node taken away is one
    that hosts a helper actor of the driver if there is one (else a decoding one)."""
    mn, out = multinode, tmp_path / "labels"
    run = Driver(mn, many_videos, out, tiny_model)

    def hosts_driver_actor(node) -> bool:
        return any(c in ("_QueueActor", "Tally") for c in mn.actors().get(node.node_id, []))

    try:
        node = wait_until(
            "a worker node decoding", DecodingWorker(mn, run, TOTAL, prefer=hosts_driver_actor), run
        )
        print(f"taking {mn.name(node)} away, its actors {mn.actors().get(node.node_id, [])}")
        mn.remove(node)
        rc = run.wait()
        assert rc == 0, f"the run ended with exit {rc}:\n{run.tail()}"
        check_exactly_once(out, many_videos)
    finally:
        if run.proc.poll() is None:
            run.kill()
        mn.restore()


# ---------------------------------------------------------------------- the feed (one node)
def test_decode_batch_gets_at_most_videos_per_decode_task_videos(
    video_corpus, tiny_model, tmp_path, monkeypatch, ray_cluster, mlflow_store
):
    import pipeline.job
    from pipeline.decode_stage import decode_batch
    from pipeline.job import run_label
    from pipeline.settings import LabelConfig

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(40):
        os.link(video_corpus["h264"], videos / f"v{i:02d}.mp4")
    sizes = tmp_path / "decode-task-sizes"

    def recording_decode_batch(batch, spec):  # runs in the decode tasks, on any worker
        import ray

        with open(sizes, "a") as f:
            f.write(f"{batch.num_rows} {ray.get_runtime_context().get_task_id()}\n")
        return decode_batch(batch, spec)

    monkeypatch.setattr(pipeline.job, "decode_batch", recording_decode_batch)
    summary = run_label(
        LabelConfig(
            input=str(videos),
            output=str(tmp_path / "labels"),
            model=str(tiny_model),
            videos_per_decode_task=2,
        )
    )
    assert summary.ok == 40
    calls = [line.split() for line in sizes.read_text().splitlines()]
    seen = [int(n) for n, _ in calls if int(n)]
    assert sum(seen) == 40
    assert max(seen) <= 2, f"decode_batch got {sorted(seen, reverse=True)[:5]}... videos"
    # on a small Ray (2 CPUs) blocks are ~12 inputs: a small run is spread over several
    # decode tasks, not one per read task
    assert len({task for _, task in calls}) >= 3


def test_stopping_the_feed_after_its_queue_actor_died_raises_nothing(ray_cluster):
    import ray

    from pipeline.source import Feed, FeedStats

    feed = Feed(iter([]), FeedStats(), readers=2).start()
    feed._thread.join(timeout=30)
    ray.kill(feed.queue.actor)
    time.sleep(1)
    feed.stop()
