"""The benchmarks' modules import each other without cycles (shared helpers live in bench/serve_support.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"


def bench_imports(path: Path) -> set[str]:
    """The ``bench`` modules ``path`` imports, at the top or inside functions, absolute or relative."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:  # from .x import y / from . import x
                targets = [module] if module else [a.name for a in node.names]
            elif module.startswith("bench."):
                targets = [module.removeprefix("bench.")]
            elif module == "bench":
                targets = [a.name for a in node.names]
            else:
                targets = []
            names.update(t.split(".")[0] for t in targets)
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("bench."))
    return {n for n in names if (BENCH / f"{n}.py").exists()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a path (first module repeated at the end), or [] when there is none."""
    done: set[str] = set()

    def visit(path: list[str]) -> list[str]:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt in path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done and (found := visit(path + [nxt])):
                return found
        done.add(path[-1])
        return []

    for start in sorted(graph):
        if start not in done and (found := visit([start])):
            return found
    return []


def test_find_cycle_sees_a_lazy_two_module_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_bench_modules_import_no_cycle() -> None:
    graph = {p.stem: bench_imports(p) for p in BENCH.glob("*.py")}
    assert find_cycle(graph) == []
    assert "serve_support" in graph["serve_precision"] and "serve_precision" in graph["serve_bench"]


def test_serving_benchmarks_import_and_show_help() -> None:
    for module in ("bench.serve_bench", "bench.kserve_bench"):
        out = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO, timeout=300
        )
        assert out.returncode == 0 and "usage:" in out.stdout, out.stderr
