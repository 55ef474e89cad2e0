"""The floor plan (docs/architecture.md): package layering, no import cycles, no private imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("tsm_model", "pipeline", "registry", "training", "jobs")
# what each package may import from the others (pipeline.errors imports nothing: anyone may)
ALLOWED = {
    "tsm_model": set(),
    "registry": {"tsm_model"},
    "pipeline": {"registry", "tsm_model"},
    "training": {"pipeline", "registry", "tsm_model"},
    "jobs": {"training", "pipeline", "registry", "tsm_model"},
}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(path: Path, module_level_only: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names) for each import statement of ours in `path`."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return [(m, names) for m, names in found if m.split(".")[0] in PACKAGES]


def test_packages_import_only_what_the_layering_allows():
    bad = []
    for name, path in modules().items():
        package = name.split(".")[0]
        for target, _ in imports(path, module_level_only=False):
            other = target.split(".")[0]
            if other not in (package, *ALLOWED[package]) and target != "pipeline.errors":
                bad.append(f"{name} imports {target}")
    assert not bad, bad


def test_no_module_imports_another_modules_private_names():
    bad = []
    for name, path in modules().items():
        for target, names in imports(path, module_level_only=False):
            if target != name:
                bad += [f"{name}: from {target} import {n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_no_import_cycles_at_module_level():
    mods = modules()
    graph = {}
    for name, path in mods.items():
        targets = set()
        for target, names in imports(path, module_level_only=True):
            # `from pkg import mod` imports the submodule pkg.mod
            targets |= {f"{target}.{n}" for n in names if f"{target}.{n}" in mods}
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target:
                targets.add(target)
        graph[name] = targets - {name}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return [*trail, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = [c for c in map(cycle_from, graph) if c]
    assert not cycles, cycles[0]


def test_the_commands_start_without_torch_or_ray():
    # `tsm --help` and a mistyped flag must answer at once
    import subprocess
    import sys

    code = ("import sys, jobs.cli; heavy = {'torch', 'ray', 'mlflow', 'decord'} & "
            "set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]"
