"""The architecture as a checked contract: the import layers of pyproject.toml ([tool.importlinter]) hold, no
module imports another in a cycle, and the stages and backends never branch on the input kind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_layer_contract_holds():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "KEPT" in res.stdout and "BROKEN" not in res.stdout


def test_layer_contract_fails_on_an_upward_import(tmp_path):
    """A core module importing the CLI breaks the contract: the check is not vacuous."""
    shutil.copytree(ROOT / "edgepack", tmp_path / "edgepack", ignore=shutil.ignore_patterns("__pycache__"))
    errors = tmp_path / "edgepack" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _upward():\n    import edgepack.cli  # noqa: F401\n")
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert "edgepack.errors is not allowed to import edgepack.cli" in res.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on.add(child)
                work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
            elif child in on:
                low[node] = min(low[node], index[child])
    return out


def test_no_import_cycles():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("edgepack", cache_dir=None)
    assert _cycles(graph) == []


BRANCH = re.compile(r"\.text\b|is_text|model\.text|\"text\"|'text'")


def test_stages_and_backends_never_branch_on_the_input_kind():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for folder in ("edgepack/stages", "edgepack/backends") for p in sorted((ROOT / folder).rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if BRANCH.search(line)]
    assert hits == []


def test_cycle_finder_finds_a_cycle():
    class Graph:
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        modules = set(edges)

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

    assert _cycles(Graph()) == [["a", "b", "c"]]
