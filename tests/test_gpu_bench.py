"""bench/gpu_bench.py runs end to end on the CPU (tiny): real servers on loopback, one JSON with every row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import gpu_bench


def test_gpu_bench_runs_tiny_on_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--work", str(tmp_path), "--device", "cpu", "--arch", "cifar_resnet20", "--max-batch", "20"]
    rc = gpu_bench.main([*argv, "--c1-requests", "3", "--c64-requests", "64", "--out", str(tmp_path / "o.json")])
    result = json.loads((tmp_path / "o.json").read_text())
    assert rc == 0, result["rows"]
    rows = result["rows"]
    assert {"naive", "ours fp32 1 worker", "ours auto", "in-process batch 10", "in-process batch 20"} <= set(rows)
    for name, row in rows.items():
        assert ("img_s" in row) if name.startswith("in-process") else (row["c1"] > 0 and row["c64"] > 0), name
        assert name.startswith("in-process") or row["gpu_util_c64"] is None  # no nvidia-smi samples on the CPU
        if name.startswith("ours"):  # where /readyz said the crops were cut: the host, on the CPU
            assert row["preprocess"] == "host" and row["preprocess_check"] is None, name
    assert set(result["targets"]) == {
        "fp16_c64_over_ceiling",
        "c1_p50_le_naive",
        "gpu_util_c64_max",
        "auto_over_best_c64",
    }
    out = capsys.readouterr().out
    assert "| naive |" in out and "preprocessing (/readyz): ours fp32 1 worker: host;" in out


def test_no_gpu_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_bench.main(["--work", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_installed_packages_are_not_reinstalled(tmp_path: Path) -> None:
    before = list(sys.path)
    assert gpu_bench.install_wheels(tmp_path / "wheels", tmp_path / "site") == []  # all present here: no pip run
    assert sys.path == before  # nothing installed, nothing added
