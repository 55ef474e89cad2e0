"""The README's path works from start to end: its `readme-test` blocks run as written.

The fenced blocks whose info string is `bash readme-test` are run in order,
as one bash script, from the repository root (where the README says to run
them) with the `tsm` of this Python first on the PATH (the README activates
`.venv`) and the temporary folder (`mktemp -d`) under pytest's. Nothing is
changed in the commands: they are what a user types.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARK = "readme-test"


def readme_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks marked ```bash readme-test, in order."""
    return [m.group(1) for m in re.finditer(
        rf"^```bash {MARK}[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S)]


def test_the_blocks_are_found():
    blocks = readme_blocks((ROOT / "README.md").read_text())
    assert len(blocks) == 2
    assert "tsm data synth" in blocks[0] and "tsm train" in blocks[1]


@pytest.fixture
def short_tmp():
    """A temporary folder with a short path: Ray puts its sockets below TMPDIR, and a Unix
    socket path may not exceed 107 bytes (pytest's tmp_path can be longer)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="tsm-readme-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_readme_path_runs_start_to_end(short_tmp):
    from registry.versions import CACHE_ENV

    tmp_path = short_tmp
    script = "set -euo pipefail\n" + "\n".join(readme_blocks((ROOT / "README.md").read_text()))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "RAY_", "AWS_")) and k != CACHE_ENV}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               TMPDIR=str(tmp_path), **{CACHE_ENV: str(tmp_path / "model-cache")})
    before = sorted(p.name for p in ROOT.iterdir())
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    out = proc.stdout
    assert re.search(r"^train: .*/corpus/train\.csv$", out, flags=re.M), out
    # 2 and 4: labelled, then all skipped
    assert out.count("Labelled 20 of 20 videos") == 2, out  # the bundled model, the champion
    assert "Labelled 0 of 20 videos" in out and "skipped    20 already labelled" in out, out
    # 3: the rows
    assert re.search(r"videos/00000\.mp4\s+ok\s+\[move_right,", out), out
    # 5-8: trained, registered, evaluated, promoted, listed
    assert re.search(r"best val top-1 [0-9.]+; model in runs/train/best; registered "
                     r"tsm-synthetic version 1", out), out
    assert re.search(r"tsm-synthetic version 1 on 3 videos: top-1 [0-9.]+", out), out
    assert "models:/tsm-synthetic@champion -> version 1" in out, out
    assert re.search(r"tsm-synthetic\s+1\s+champion", out), out
    assert "Traceback" not in proc.stderr
    # everything was written in the scratch folder, nothing in the repository
    assert sorted(p.name for p in ROOT.iterdir()) == before
    (scratch,) = [p for p in tmp_path.iterdir() if p.name.startswith("tmp")]
    assert {"corpus", "labels", "mlflow.db", "runs"} <= {p.name for p in scratch.iterdir()}
