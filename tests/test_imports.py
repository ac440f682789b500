"""Architecture rules a reviewer would otherwise check by hand: stages never import each other; clients stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = ("train", "export", "serve", "clients")


def imported_top_level_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("stage", STAGES)
def test_stage_imports_no_other_stage(stage: str) -> None:
    offenders = []
    for path in sorted((REPO / stage).rglob("*.py")):
        others = imported_top_level_packages(path) & (set(STAGES) - {stage})
        if others:
            offenders.append(f"{path.relative_to(REPO)} imports {sorted(others)}")
    assert not offenders, offenders


def test_resnet_imports_no_stage() -> None:
    for path in sorted((REPO / "resnet").rglob("*.py")):
        assert not imported_top_level_packages(path) & set(STAGES), path


def test_clients_do_not_import_torch() -> None:
    code = "import sys, clients, clients.classify, clients.loadgen; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
