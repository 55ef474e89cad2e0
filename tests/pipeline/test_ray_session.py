"""Starting Ray beside the plan, and stopping it: each test in its own process (the other
tests share one Ray), with a local Ray of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap


def _run(script: str) -> dict:
    """Run `script` in a fresh Python with no RAY_ADDRESS; the JSON of its last line."""
    env = {**os.environ, "RAY_ADDRESS": ""}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is gone
    except FileNotFoundError:
        return False


def test_stopping_a_local_ray_leaves_none_of_its_processes():
    """stop_ray stops the autoscaler monitor before ray.shutdown (which alone waits a second
    on it: the monitor tries to report to the GCS already gone); afterwards no process of
    that Ray is alive."""
    result = _run("""
        import json
        import ray
        from pipeline.ray_session import init_ray, stop_ray

        assert init_ray()
        node = ray._private.worker._global_node
        pids = {kind: [i.process.pid for i in infos]
                for kind, infos in node.all_processes.items()}
        monitor = node.all_processes["monitor"][0].process
        shutdown, seen = ray.shutdown, {}

        def spy():  # was the monitor stopped before ray.shutdown began?
            seen["monitor_gone"] = monitor.poll() is not None
            shutdown()

        ray.shutdown = spy
        stop_ray()
        print(json.dumps({"pids": pids, "initialized": ray.is_initialized(), **seen}))
    """)
    assert not result["initialized"] and result["monitor_gone"]
    assert "monitor" in result["pids"] and "gcs_server" in result["pids"]
    left = {k: [p for p in v if _alive(p)] for k, v in result["pids"].items()}
    assert not any(left.values()), left


def test_ray_starts_beside_the_work_and_outlives_its_thread():
    """while_ray_starts runs the work in another thread while the caller's thread starts
    Ray: Ray's processes die with the thread that started them, so after the work's thread
    is gone Ray must still run tasks. A failing work stops the Ray started for it."""
    result = _run("""
        import json, threading, time
        import ray
        from pipeline.ray_session import stop_ray, while_ray_starts

        def fails():
            raise ValueError("no such model")

        try:
            while_ray_starts(fails)
            failed = None
        except ValueError as e:
            failed = str(e)
        after_failure = ray.is_initialized()

        def work():
            time.sleep(0.5)
            return threading.current_thread().name

        name, started = while_ray_starts(work)
        time.sleep(1)  # the work's thread has ended by now

        @ray.remote
        def square(x):
            return x * x

        answer = ray.get(square.remote(7), timeout=60)
        again = while_ray_starts(lambda: 1)  # Ray is up: joined, not started again
        stop_ray()
        print(json.dumps({"failed": failed, "after_failure": after_failure, "name": name,
                          "main": threading.main_thread().name, "started": started,
                          "answer": answer, "again": again}))
    """)
    assert result["failed"] == "no such model" and result["after_failure"] is False
    assert result["started"] is True and result["name"] != result["main"]
    assert result["answer"] == 49
    assert result["again"] == [1, False]


def test_a_run_that_cannot_take_its_output_stops_the_ray_started_for_it(
        tmp_path, tiny_model, video_corpus, mlflow_store):
    """A run whose output another run holds ends at once (OutputBusy), before its stream:
    the Ray started beside its plan must not outlive it (a library caller, e.g. the test
    suite, would find it still up)."""
    out = tmp_path / "out"
    result = _run(f"""
        import json
        import ray
        from pipeline.errors import LabelError
        from pipeline.job import run_plan
        from pipeline.plan import plan_label
        from pipeline.ray_session import while_ray_starts
        from pipeline.settings import LabelConfig
        from pipeline.store import store_for

        out = {str(out)!r}
        config = LabelConfig(input={str(video_corpus["h264"])!r}, output=out,
                             model={str(tiny_model)!r})
        with store_for(out).lease(out, "run-in-progress"):  # a live run holds the output
            plan, started = while_ray_starts(lambda: plan_label(config))
            try:
                run_plan(plan, ray_started=started)
                error = None
            except LabelError as e:
                error = type(e).__name__
        print(json.dumps({{"started": started, "error": error,
                           "initialized": ray.is_initialized()}}))
    """)
    assert result == {"started": True, "error": "OutputBusy", "initialized": False}
