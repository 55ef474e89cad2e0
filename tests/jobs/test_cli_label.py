"""`tsm label`: one-line errors for bad flags and inputs, a summary screen for a real run."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from jobs.cli import app


@pytest.fixture
def runner():
    return CliRunner()


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--segments", "0"], "error: segments must be >= 1, got 0"),
        (["--embedding-dtype", "int8"], "error: embedding dtype must be float32 or float16"),
        (["--actors", "0"], "error: actors must be >= 1"),
        (["--part-rows", "0"], "error: part rows must be >= 1"),
    ],
)
def test_bad_values_are_one_line(runner, tmp_path, extra, needle):
    result = runner.invoke(app, ["label", str(tmp_path), "-o", str(tmp_path / "o"), "-m", "x",
                                 *extra])
    assert result.exit_code == 2
    assert _lines(result.output) == [needle] or _lines(result.output)[0].startswith(needle)
    assert len(_lines(result.output)) == 1


@pytest.mark.usefixtures("mlflow_store")
def test_missing_model_and_input_are_one_line(runner, tmp_path, tiny_model):
    result = runner.invoke(app, ["label", str(tmp_path), "-o", str(tmp_path / "o"),
                                 "-m", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert _lines(result.output) == [f"error: model directory not found: {tmp_path / 'nope'}"]
    result = runner.invoke(app, ["label", str(tmp_path / "none"), "-o", str(tmp_path / "o"),
                                 "-m", str(tiny_model)])
    assert result.exit_code == 2
    assert _lines(result.output) == [f"error: input not found: {tmp_path / 'none'}"]


def test_unknown_flag_is_a_usage_error_without_traceback(runner, tmp_path):
    result = runner.invoke(app, ["label", str(tmp_path), "-o", "o", "-m", "m", "--segmnts", "8"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == ("error: no such option --segmnts; did you mean --segments or "
                             "--num-segments? (see tsm label -h)\n")


@pytest.mark.usefixtures("mlflow_store")
@pytest.mark.parametrize("output", ["/proc/x", "/dev/null/x"])
def test_an_output_that_cannot_be_created_is_one_line(runner, video_corpus, tiny_model, output):
    result = runner.invoke(app, ["label", str(video_corpus["h264"]), "-o", output,
                                 "-m", str(tiny_model), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = _lines(result.stderr)
    assert line.startswith(f"error: cannot write to output {output}: ")


@pytest.mark.usefixtures("ray_cluster", "mlflow_store")
def test_a_run_prints_the_summary(runner, tmp_path, video_corpus, tiny_model):
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    for name in ("h264", "text.mp4"):
        shutil.copy(video_corpus[name], src / video_corpus[name].name)
    args = ["label", str(src), "-o", str(tmp_path / "out"), "-m", str(tiny_model), "--top-k", "3",
            "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Labelled 2 of 2 videos" in out
    assert "ok         1" in out and "errors     1 (corrupt 1)" in out
    assert str(tmp_path / "out") in out and "MLflow" in out
    assert "Traceback" not in out and "core_worker" not in out
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "skipped    2 already labelled" in again.output


@pytest.mark.usefixtures("mlflow_store")
def test_a_second_run_on_a_busy_output_is_one_line(runner, tmp_path, video_corpus, tiny_model):
    from pipeline.store import store_for

    out = str(tmp_path / "out")
    with store_for(out).lease(out, "run-in-progress"):  # a live run holds the output
        result = runner.invoke(app, ["label", str(video_corpus["h264"]), "-o", out,
                                     "-m", str(tiny_model), "--no-progress"])
    assert result.exit_code == 2
    (line,) = _lines(result.output)
    assert line.startswith(f"error: output {out} is being written by run run-in-progress")


@pytest.mark.usefixtures("mlflow_store")
def test_dry_run_prints_the_plan_and_writes_nothing(runner, tmp_path, video_corpus, tiny_model):
    import json
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    for name in ("h264", "vp9"):
        shutil.copy(video_corpus[name], src / video_corpus[name].name)
    result = runner.invoke(app, ["label", str(src), "-o", str(tmp_path / "out"),
                                 "-m", str(tiny_model), "--segments", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert (plan["videos_listed"], plan["to_label"], plan["already_done"]) == (2, 2, 0)
    assert (plan["num_segments"], plan["arch"], plan["model_name"]) == (2, "mobilenetv2",
                                                                        "tiny-tsm")
    assert not (tmp_path / "out").exists()
