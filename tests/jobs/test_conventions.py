"""The command-line conventions every `tsm` command keeps (see jobs/console.py).

`--version`; `-h` as `--help`; usage errors and unexpected failures as one
line on stderr (exit 2 and 1), never a usage box or a traceback; documented
defaults visible in the help; results alone on stdout (`--json`: one JSON
value); the progress display naming the start-up phases.
"""

from __future__ import annotations

import io
import json
import re
import sys
import tempfile
from importlib.metadata import version

import pytest
import typer
from typer.testing import CliRunner

import tsm_model
from jobs.cli import app


@pytest.fixture
def runner():
    return CliRunner()


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def commands(group=None, path=()):
    """Every command of the tree (hidden ones included) as (path, click command)."""
    group = group or typer.main.get_command(app)
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):
            yield from commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


LEAVES = [p for p, _ in commands()]
GROUPS = [(), ("data",), ("models",), ("model",)]


def test_version_is_the_package_version(runner):
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.stdout == f"tsm {version('tsm-labeller')}\n"


@pytest.mark.parametrize("path", GROUPS + LEAVES, ids=lambda p: " ".join(p) or "tsm")
def test_dash_h_is_help_everywhere(runner, path):
    short = runner.invoke(app, [*path, "-h"])
    assert short.exit_code == 0, short.output
    assert "Usage: tsm" in short.stdout and short.stderr == ""
    assert short.stdout == runner.invoke(app, [*path, "--help"]).stdout


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_an_unknown_option_is_one_line_everywhere(runner, path):
    res = runner.invoke(app, [*path, "--zzz"])
    assert res.exit_code == 2
    assert res.stdout == ""
    assert res.stderr == f"error: no such option --zzz (see tsm {' '.join(path)} -h)\n"


@pytest.mark.parametrize("args, message", [
    (["label", "in", "-m", "m"], "missing option '--output' / '-o'"),
    (["label", "-o", "o", "-m", "m"], "missing argument 'input'"),
    (["label", "in", "-o", "o", "-m", "m", "--top-k", "abc"], "invalid value for '--top-k'"),
    (["evaluate", "-m", "m", "--manifest", "x", "--batch-size", "1.5"],
     "invalid value for '--batch-size'"),
    (["train", "--train", "a", "--val", "b", "--epochs", "ten"], "invalid value for '--epochs'"),
    (["data", "synth"], "missing argument 'OUT'"),
    (["data", "synth", "x", "--videos"], "option '--videos' requires an argument"),
    (["demo", "--videos", "many"], "invalid value for '--videos'"),
    (["models", "promote", "name"], "missing argument 'version'"),
    (["models", "register", "dir"], "missing option '--name'"),
    (["models", "info"], "missing argument 'target'"),
    (["models", "import", "x.pth"], "missing option '--out'"),
    (["lable"], "no such command 'lable'"),
])
def test_usage_errors_are_one_line(runner, args, message):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    (line,) = lines(res.stderr)
    assert line.startswith(f"error: {message}") and line.endswith(" -h)"), line
    assert "Usage" not in line


# the library call each command makes, made to fail as a bug would
FAILURES = [
    (["label", "VIDEO", "-o", "OUT", "-m", "MODEL", "--no-progress"], "pipeline.plan.plan_label"),
    (["evaluate", "-m", "MODEL", "--manifest", "M", "--no-progress"],
     "training.evaluation.evaluate"),
    (["train", "--train", "M", "--val", "M", "--no-progress"], "training.train_job.train"),
    (["demo", "--workdir", "OUT", "--videos", "1"], "training.synthetic.generate"),
    (["data", "synth", "OUT", "--videos", "1", "--no-progress"], "training.synthetic.generate"),
    (["models", "list"], "registry.versions.list_versions"),
    (["models", "list", "--json"], "registry.versions.list_versions"),
    (["models", "register", "MODEL", "--name", "n"], "registry.versions.register_if_new"),
    (["models", "promote", "n", "1"], "registry.versions.promote"),
    (["models", "info", "MODEL"], "tsm_model.load"),
    (["models", "import", "M", "--out", "OUT"], "tsm_model.import_checkpoint"),
    (["model", "info", "MODEL"], "tsm_model.load"),
]


@pytest.mark.parametrize("args, target", FAILURES, ids=lambda a: " ".join(a[:2]))
def test_an_unexpected_failure_is_one_line_and_a_log(runner, store, monkeypatch, args, target):
    import importlib

    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line of the message")

    # import every command's modules first: one imported during the test would bind `boom`
    # by name (`from pipeline.plan import plan_label`) for the rest of the session
    for loaded in ("pipeline.job", "training.evaluation", "training.train_job", "jobs.demo"):
        importlib.import_module(loaded)
    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, boom)
    monkeypatch.setattr(tempfile, "tempdir", str(store))  # the log goes here
    video = store / "v.mp4"
    video.write_bytes(b"x")
    manifest = store / "m.csv"
    manifest.write_text(f"uri,label\n{video},move_left\n")
    subs = {"VIDEO": str(video), "OUT": str(store / "out"), "MODEL": str(tsm_model.BUNDLED),
            "M": str(manifest)}
    res = runner.invoke(app, [subs.get(a, a) for a in args])
    assert res.exit_code == 1, res.output
    assert res.stdout == ""
    err = lines(res.stderr)  # notes on what the command does may come first
    assert [ln for ln in err if ln.startswith("error")] == err[-1:], res.stderr
    assert "Traceback" not in res.stderr and "second line" in err[-1]
    m = re.fullmatch(r"error: RuntimeError: boom second line of the message \(details: (.+)\)",
                     err[-1])
    assert m, err[-1]
    with open(m.group(1)) as f:
        log = f.read()
    assert "Traceback" in log and "RuntimeError: boom" in log


def test_documented_defaults_show_in_the_help(runner, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    text = runner.invoke(app, ["label", "-h"]).stdout
    row = {m.group(1): line for line in text.splitlines()
           if (m := re.search(r"(--[a-z0-9-]+)", line))}
    assert "[default: (the model's)]" in row["--num-segments"]
    assert "[default: (measured at start-up; 1 with GPUs)]" in row["--cpus-per-actor"]
    assert "[default: auto]" in row["--decoder"] and "[default: (none)]" in row["--keep-columns"]
    assert "[default: 5]" in row["--top-k"] and "[default: 120.0]" in row["--decode-timeout"]
    assert "[default: 10000]" in row["--part-rows"]
    assert "[default: (32 with GPUs, 8 on CPU)]" in row["--batch-size"]


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_every_help_text_and_default_is_shown_whole(runner, monkeypatch, path):
    """No help text loses a [bracketed] part to rich markup, and every optional value shows
    its default (the value, or what decides it)."""
    monkeypatch.setenv("COLUMNS", "400")
    text = runner.invoke(app, [*path, "-h"]).stdout
    flat = " ".join(text.split())
    cmd = dict(commands())[path]
    for param in cmd.params:
        if param.help:
            assert " ".join(param.help.split()) in flat, (param.name, param.help)
        flag = getattr(param, "is_flag", False) or getattr(param, "is_bool_flag", False)
        if param.required or flag or param.name in ("help", "as_json"):
            continue
        if param.param_type_name == "option":
            name = param.opts[0]
            (line,) = [ln for ln in text.splitlines()
                       if re.match(rf"│\s+(\*\s+)?{re.escape(name)}[\s,]", ln)]
        else:
            name = param.name
            (line,) = [ln for ln in text.splitlines() if param.help[:40] in ln]
        assert "[default: " in line, (path, name)


# ---------------------------------------------------------------- stdout: results only


def test_models_list_json_is_one_array(runner, store):
    res = runner.invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    res = runner.invoke(app, ["models", "register", str(tsm_model.BUNDLED), "--name", "m"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0, res.output
    (line,) = res.stdout.splitlines()
    (v,) = json.loads(line)
    assert (v["name"], v["version"], v["aliases"], v["latest_evaluations"]) == ("m", "1", [], [])
    assert v["model_id"] and v["tags"]["weights_sha256"]


def _mlflow_talks_on_stdout(monkeypatch):
    """MLflow prints 'View run ... at: URL' on stdout when a run ends on a tracking server
    (TrackingServiceClient._log_url, for REST stores only): do it here on SQLite too."""
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    def log_url(self, run_id):
        sys.stdout.write(f"🏃 View run {run_id} at: http://mlflow/#/runs/{run_id}\n")

    monkeypatch.setattr(TrackingServiceClient, "_log_url", log_url)


@pytest.mark.usefixtures("ray_cluster", "mlflow_store")
def test_label_json_is_one_object_and_mlflow_stays_off_stdout(runner, monkeypatch, tmp_path,
                                                              video_corpus, tiny_model):
    _mlflow_talks_on_stdout(monkeypatch)
    res = runner.invoke(app, ["label", str(video_corpus["h264"]), "-o", str(tmp_path / "o"),
                              "-m", str(tiny_model), "--json"])
    assert res.exit_code == 0, res.output
    (line,) = res.stdout.splitlines()
    summary = json.loads(line)
    assert (summary["ok"], summary["listed"], summary["errors"]) == (1, 1, {})
    assert summary["model_name"] == "tiny-tsm" and summary["run_id"]
    assert "View run" in res.stderr  # where MLflow's line went (the log, on a real terminal)


class FakeJob:
    """What pipeline.job.run_plan does to its Progress: phases set without a callback."""

    def __init__(self):
        from pipeline.progress import Progress

        self.p = Progress(phase="waiting for the output", actors=1)


def test_progress_names_every_start_up_phase_before_the_first_video():
    from rich.console import Console

    from jobs.console import ProgressBar

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    job = FakeJob()
    seen = []
    with ProgressBar(True, console=console) as bar:
        bar.start(job.p)  # run_plan's on_start, before it takes the lease
        seen.append(buf.getvalue())
        for phase in ("reading the output", "listing", "starting Ray"):
            job.p.phase = phase  # no callback: the display reads the Progress object itself
            buf.truncate(0), buf.seek(0)
            bar.refresh()
            seen.append(buf.getvalue())
        job.p.phase = "loading the model"
        bar.update(job.p)  # the first tick
        buf.truncate(0), buf.seek(0)
        bar.refresh()
        seen.append(buf.getvalue())
        job.p.phase, job.p.listed, job.p.listing_done, job.p.done = "labelling", 4, True, 1
        buf.truncate(0), buf.seek(0)
        bar.refresh()
        seen.append(buf.getvalue())
    phases = ["waiting for the output", "reading the output", "listing", "starting Ray",
              "loading the model", "labelling"]
    for phase, screen in zip(phases, seen, strict=True):
        assert phase in screen, (phase, screen)
    assert "0/?" in seen[3]  # no total before the listing is complete
    assert "1/4" in seen[-1]


def test_the_progress_display_draws_only_itself_and_only_on_a_terminal(capsys):
    from rich.console import Console

    from jobs.console import ProgressBar

    for enabled, terminal in ((False, True), (True, False)):
        buf = io.StringIO()
        job = FakeJob()
        with ProgressBar(enabled, console=Console(file=buf, force_terminal=terminal)) as bar:
            bar.start(job.p)
            bar.update(job.p)
            bar.refresh()
        assert buf.getvalue() == ""
    # what libraries print meanwhile goes where stderr points (the log), not onto the display
    buf = io.StringIO()
    with ProgressBar(True, console=Console(file=buf, force_terminal=True)) as bar:
        bar.start(FakeJob().p)
        print("a library's warning", file=sys.stderr)
        bar.refresh()
    assert "a library's warning" not in buf.getvalue()
    assert "a library's warning" in capsys.readouterr().err


# ---------------------------------------------------------------- files


def test_saved_models_are_readable_by_all(tmp_path):
    import os

    import torch

    torch.manual_seed(0)
    model = tsm_model.build(tsm_model.TSMConfig(arch="mobilenetv2", num_classes=2,
                                                num_segments=2, input_size=32))
    old = os.umask(0o022)
    try:
        out = tsm_model.save(model, tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644}


@pytest.mark.usefixtures("ray_cluster")
def test_train_and_evaluate_json_are_one_object_and_files_are_readable_by_all(
        runner, store, monkeypatch):
    import os

    from training import synthetic

    _mlflow_talks_on_stdout(monkeypatch)
    old = os.umask(0o022)
    try:
        manifests = synthetic.generate(store / "corpus", synthetic.SynthConfig(
            videos=20, seed=3, size=32, min_frames=8, max_frames=10))
        tiny = json.dumps({"arch": "mobilenetv2", "num_segments": 2, "input_size": 32,
                           "resize_size": 32})
        res = runner.invoke(app, [
            "train", "--train", str(manifests["train"]), "--val", str(manifests["val"]),
            "--model-config", tiny, "--epochs", "1", "--workers", "0", "--threads", "1",
            "--name", "tsm-json", "--out", str(store / "run"), "--json"])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    (line,) = res.stdout.splitlines()
    trained = json.loads(line)
    assert (trained["name"], trained["version"], trained["registered"]) == ("tsm-json", "1", True)
    assert len(trained["history"]) == 1 and trained["best_dir"] == str(store / "run" / "best")
    assert "View run" in res.stderr
    written = [store / "run" / "history.json", *(store / "run" / "best").iterdir()]
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {
        "history.json": 0o644, "model.safetensors": 0o644, "config.json": 0o644}

    res = runner.invoke(app, ["evaluate", "-m", "models:/tsm-json/1", "--manifest",
                              str(manifests["test"]), "--output", str(store / "eval"), "--json"])
    assert res.exit_code == 0, res.output
    (line,) = res.stdout.splitlines()
    evaluated = json.loads(line)
    assert (evaluated["model_name"], evaluated["model_version"]) == ("tsm-json", "1")
    assert evaluated["num_videos"] == 3 and 0 <= evaluated["top1"] <= 1
    assert evaluated["dataset_name"] == "test.csv" and evaluated["run_id"]


# ------------------------------------------------------------- the console entry point
def _console(*argv: str, code: str = "from jobs.cli import main; main()"):
    import subprocess

    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120)


def test_the_console_entry_point_keeps_the_exit_codes_and_the_output():
    """`main` ends the process itself (os._exit, no module teardown): the output still comes
    out whole and the exit status is the command's."""
    assert _console("--version").stdout == f"tsm {version('tsm-labeller')}\n"
    assert _console("--version").returncode == 0
    bad = _console("label", "m.csv", "--output", "o", "--model", "x", "--top-k", "many")
    assert bad.returncode == 2 and len(lines(bad.stderr)) == 1 and bad.stdout == ""


def test_ending_the_process_joins_threads_and_runs_exit_hooks(tmp_path):
    """What a normal exit does that matters, `end_process` does too: it waits for the
    threads still working, runs the atexit hooks, flushes what was printed, keeps the code."""
    code = f"""
import atexit, pathlib, sys, threading, time
from jobs.cli import end_process
out = pathlib.Path({str(tmp_path)!r})
def work():
    time.sleep(0.5)
    (out / "thread").write_text("done")
threading.Thread(target=work).start()
atexit.register(lambda: (out / "hook").write_text("ran"))
sys.stdout.write("no newline, still buffered")
end_process(3)
"""
    res = _console(code=code)
    assert res.returncode == 3
    assert res.stdout == "no newline, still buffered"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "hook").read_text() == "ran"


def test_sys_exit_with_a_message_prints_it_and_exits_1():
    res = _console(code="import sys; from jobs import cli\n"
                        "cli.app = lambda: sys.exit('gone wrong')\ncli.main()")
    assert res.returncode == 1 and res.stderr.strip() == "gone wrong"
