"""bench/device_check.sh on the CPU: the same script and steps with tiny settings, so its plumbing, its assertions
and its two output files are tested here. Nothing in it is a GPU result: ``--device cpu`` compares the CPU with
itself and the summary says ``"device": "cpu"``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_check(out: Path, args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PY": sys.executable, "DEVICE_CHECK_ARGS": args}
    return subprocess.run(
        ["bash", "bench/device_check.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_step_asserts_and_writes_two_files(tmp_path: Path) -> None:
    proc = run_check(tmp_path, "--device cpu --tiny --skip compile --min-accuracy 0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device_check.json", "device_check.log"]
    summary = json.loads((tmp_path / "device_check.json").read_text())
    assert summary["device"] == "cpu" and summary["gpu"] is None and summary["passed"] and summary["complete"]
    steps = summary["steps"]
    assert steps["compile"] == {"passed": None, "skipped": True}
    assert steps["parity_fp32"]["top1_agreement_pct"] == 100.0 and steps["parity_fp32"]["min_cosine"] >= 0.9999
    assert set(steps["autocast"]) >= {"bf16", "fp16"} and steps["autocast"]["bf16"]["top1_agreement_pct"] >= 99
    assert set(steps["train_step"]["images_per_s"]) == {"fp32", "channels_last", "channels_last_bf16"}
    assert steps["digits"]["images"] == 40  # --tiny: the first 40 held-out digits
    # no CUDA here: the TensorRT step says why it was skipped instead of failing the check
    assert steps["trt_multiscale"]["passed"] is None and steps["trt_multiscale"]["skipped"]
    assert "CUDA" in steps["trt_multiscale"]["why"] or "tensorrt" in steps["trt_multiscale"]["why"]


def test_a_failed_step_fails_the_check_and_says_why(tmp_path: Path) -> None:
    proc = run_check(tmp_path, "--device cpu --tiny --skip digits compile train_step", timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "device_check.json").read_text())
    assert summary["passed"] is False
    assert summary["steps"]["parity_fp32"]["passed"] is False
    assert "needs the digits model" in summary["steps"]["parity_fp32"]["failure"]


def test_asking_for_cuda_without_it_exits_4(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the real check would run")
    proc = run_check(tmp_path, "--device cuda", timeout=300)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "no CUDA device here" in (tmp_path / "device_check.log").read_text()
