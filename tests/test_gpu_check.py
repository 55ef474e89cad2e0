"""bench/gpu_check.py, checked on the CPU as it will run on the GPU box: with nothing but torch
(torchvision, safetensors, DALI and decord blocked), from the ~30 KB pack, never aborting."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

# Run a script as on the GPU box: these imports fail as if the packages were not installed.
BARE = """
import importlib.abc, runpy, sys
BLOCKED = {"torchvision", "safetensors", "nvidia", "decord", "av", "ray", "mlflow"}
class Bare(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: a bare GPU box)")
sys.meta_path.insert(0, Bare())
script, *sys.argv[1:] = sys.argv[1:]
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
"""


def run_bare(script: Path, *args: str, cwd: Path = ROOT, timeout: float = 600):
    return subprocess.run([sys.executable, "-c", BARE, str(script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tv_lite():
    sys.path.insert(0, str(BENCH))
    import tv_lite

    yield tv_lite
    sys.path.remove(str(BENCH))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_tv_lite_is_torchvision_s_network(tv_lite, name, one_torch_thread):
    ours, theirs = getattr(tv_lite, name)().eval(), getattr(torchvision.models, name)().eval()
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    ours.load_state_dict(b)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_tsm_builds_the_same_network_without_torchvision(tmp_path, one_torch_thread):
    """TSM ResNet-50 and MobileNetV2 built by gpu_check's import (stub package, tv_lite) give
    the same outputs as the real tsm_model with torchvision, for the same weights."""
    import tsm_model

    x = torch.randn(1, 2, 3, 32, 32)
    for arch in ("resnet50", "mobilenetv2"):
        config = tsm_model.TSMConfig(arch=arch, num_classes=7, num_segments=2, input_size=32,
                                     resize_size=32)
        model = tsm_model.build(config).eval()
        torch.save({"state": model.state_dict(), "x": x}, tmp_path / f"{arch}.pt")
        with torch.no_grad():
            torch.save(model(x), tmp_path / f"{arch}.out.pt")
    script = tmp_path / "bare_build.py"
    script.write_text(f"""
import sys, torch
sys.path.insert(0, {str(BENCH)!r})
import gpu_check
report = gpu_check.Report(__import__("pathlib").Path({str(tmp_path / "r")!r}), 60)
TSMConfig, build = gpu_check.import_tsm(report)
assert "tv_lite" in report.env["torchvision"], report.env
assert "network modules only" in report.env["tsm_model"], report.env
for arch in ("resnet50", "mobilenetv2"):
    saved = torch.load({str(tmp_path)!r} + f"/{{arch}}.pt", weights_only=True)
    model = build(TSMConfig(arch=arch, num_classes=7, num_segments=2, input_size=32,
                            resize_size=32)).eval()
    model.load_state_dict(saved["state"])
    with torch.no_grad():
        torch.save(model(saved["x"]), {str(tmp_path)!r} + f"/{{arch}}.bare.pt")
print("built")
""")
    proc = run_bare(script)
    assert proc.returncode == 0 and "built" in proc.stdout, proc.stderr[-3000:]
    for arch in ("resnet50", "mobilenetv2"):
        expected = torch.load(tmp_path / f"{arch}.out.pt", weights_only=True)
        got = torch.load(tmp_path / f"{arch}.bare.pt", weights_only=True)
        assert torch.allclose(got, expected, atol=1e-6), arch


def test_cpu_smoke_runs_every_section_from_the_pack(tmp_path):
    """The pack unpacked in an empty folder, run with nothing but torch: every section runs
    or says why not, results.json and results.md are written, exit status 0."""
    pack = tmp_path / "gpu_check.tar.gz"
    subprocess.run([str(BENCH / "gpu_check.sh"), "--pack", str(pack)], check=True,
                   capture_output=True)
    box = tmp_path / "box"
    box.mkdir()
    with tarfile.open(pack) as tar:
        tar.extractall(box, filter="data")
    assert sum(p.stat().st_size for p in box.rglob("*") if p.is_file()) < 1024 * 1024
    out = tmp_path / "out"
    proc = run_bare(box / "bench" / "gpu_check.py", "--cpu-smoke", "--archs", "mobilenetv2",
                    "--batches", "1", "--out", str(out), cwd=box)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    records = result["records"]
    ok = {(r["section"], r.get("variant")) for r in records if r.get("status") == "ok"}
    for variant in ("fp32", "bf16", "channels_last+bf16"):
        assert ("model", variant) in ok, records
    assert ("preprocess", None) in ok
    compiled = [r for r in records if r.get("variant", "").startswith("compile")
                or r.get("section") == "compile"]
    assert compiled and all(r["status"] in ("ok", "skipped") for r in compiled)
    skipped = [r for r in records if r.get("status") == "skipped"]
    assert all(r["reason"] for r in skipped)
    assert any(r["section"] == "copy" and "CUDA" in r["reason"] for r in skipped)
    assert "tv_lite" in result["env"]["torchvision"]
    assert "absent" in result["env"]["modules"]["nvidia.dali"]
    markdown = (out / "results.md").read_text()
    assert "## mobilenetv2: clips/s" in markdown and "## skipped" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_full_run_says_so(tmp_path):
    proc = run_bare(BENCH / "gpu_check.py", "--quick", "--out", str(tmp_path))
    assert proc.returncode == 1
    assert "no CUDA device" in proc.stdout
    assert json.loads((tmp_path / "results.json").read_text())["records"][0]["status"] == "skipped"
