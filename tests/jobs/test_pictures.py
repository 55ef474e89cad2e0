"""docs/pictures/make.py: the pictures draw, stay small, and the throughput chart reads the
results file bench/bench_vs_baselines.py writes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_BYTES = 300 * 1024


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pictures():
    return load(ROOT / "docs" / "pictures" / "make.py", "docs_pictures_make")


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_contact_sheet_and_pipeline_draw_small_pngs(pictures, tmp_path):
    for made in (pictures.classes_sheet(tmp_path / "classes.png", frames=3),
                 pictures.pipeline_diagram(tmp_path / "pipeline.png")):
        assert is_png(made) and 0 < made.stat().st_size < MAX_BYTES


def test_the_committed_pictures_are_small_and_shown(pictures):
    names = ["synthetic_classes.png", "pipeline.png", "predictions.png", "confusion.png"]
    for name in names:
        path = ROOT / "docs" / "pictures" / name
        assert is_png(path) and path.stat().st_size < MAX_BYTES, name
    readme = (ROOT / "README.md").read_text()
    assert "docs/pictures/synthetic_classes.png" in readme
    assert "docs/pictures/pipeline.png" in readme
    assert "pictures/pipeline.png" in (ROOT / "docs" / "architecture.md").read_text()


def test_throughput_chart_reads_the_benchmark_results(pictures, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        bench = load(ROOT / "bench" / "bench_vs_baselines.py", "bench_vs_baselines_for_test")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    runs = [bench.Run(method=m, round=r, position=0, videos=10, wall_s=wall, tree_s=wall,
                      cpu_s=2 * wall, inner_s=wall - 3, leftovers_killed=0, rows=10,
                      load_before=0.1, log="", top5={})
            for r in (1, 2) for m, wall in (("plain", 20.0 + r), ("ray", 15.0 + r),
                                              ("ours", 10.0 + r))]
    methods = list(bench.METHODS)
    results = {  # the keys main() writes that the chart reads
        "summary": bench.summarise(runs, methods), "cpus": 2,
        "corpus": {"videos": 10, "duration_s": 10.0},
        "model": {"name": "resnet18-224", "config": {"arch": "resnet18"}},
        "machine": {"cpu_model": "a test CPU"},
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    made = pictures.throughput_chart(path, tmp_path / "chart.png")
    assert is_png(made) and made.stat().st_size < MAX_BYTES
