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
    assert summary["device"] == "cpu" and summary["gpu"] is None and summary["complete"]
    # three steps not exercised: the check is partial, not passed (issue 25 item 8), and exits 0 (nothing failed)
    assert summary["result"] == "partial" and summary["passed"] is False
    steps = summary["steps"]
    assert steps["compile"] == {"status": "not exercised", "passed": None, "why": "--skip"}
    assert steps["parity_fp32"]["top1_agreement_pct"] == 100.0 and steps["parity_fp32"]["min_cosine"] >= 0.9999
    assert set(steps["autocast"]) >= {"bf16", "fp16"} and steps["autocast"]["bf16"]["top1_agreement_pct"] >= 99
    assert set(steps["train_step"]["images_per_s"]) == {"fp32", "channels_last", "channels_last_bf16"}
    assert steps["digits"]["images"] == 40  # --tiny: the first 40 held-out digits
    # no CUDA/TensorRT here: the TensorRT steps say why they were not exercised, and never read as passed
    for name in ("trt_multiscale", "trt_int8"):
        assert steps[name]["status"] == "not exercised" and steps[name]["passed"] is None, steps[name]
        assert "CUDA" in steps[name]["why"] or "tensorrt" in steps[name]["why"]
    assert summary["counts"] == {"passed": 4, "failed": 0, "not exercised": 3}
    # TF32 off only while parity_fp32 compares: the fp32 training figures run with PyTorch's defaults
    assert steps["parity_fp32"]["tf32"] == {"cudnn": False, "matmul": False}
    assert steps["train_step"]["tf32"] == {"cudnn": True, "matmul": False}
    # the table printed last: every step with its status, the not-exercised ones with why
    table = proc.stdout[proc.stdout.index("== summary") :].splitlines()
    rows = {line.split()[0]: line for line in table[2:] if line.strip() and not line.startswith("device_check.py")}
    assert set(rows) == {"digits", "parity_fp32", "autocast", "compile", "train_step", "trt_multiscale", "trt_int8"}
    assert "not exercised" in rows["trt_int8"] and ("tensorrt" in rows["trt_int8"] or "CUDA" in rows["trt_int8"])
    assert " passed " in rows["digits"] and "passed" not in rows["compile"] and " ok" not in proc.stdout
    assert proc.stdout.strip().endswith("device_check.py exit 0")


def test_a_failed_step_fails_the_check_and_says_why(tmp_path: Path) -> None:
    argv = "--device cpu --tiny --skip compile train_step autocast --min-accuracy 101"
    proc = run_check(tmp_path, argv, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "device_check.json").read_text())
    steps = summary["steps"]
    assert summary["passed"] is False and summary["counts"]["failed"] == 1
    assert steps["digits"]["status"] == "failed" and "< 101.0%" in steps["digits"]["failure"]
    assert steps["parity_fp32"]["status"] == "passed"  # the model exists: the next steps still run
    assert "digits           failed" in proc.stdout and proc.stdout.strip().endswith("device_check.py exit 1")


def test_a_step_whose_input_never_came_is_not_exercised_not_passed(tmp_path: Path) -> None:
    proc = run_check(tmp_path, "--device cpu --tiny --skip digits compile train_step", timeout=300)
    summary = json.loads((tmp_path / "device_check.json").read_text())
    for name in ("parity_fp32", "autocast"):
        assert summary["steps"][name]["status"] == "not exercised", summary["steps"][name]
        assert summary["steps"][name]["passed"] is None and "did not pass" in summary["steps"][name]["why"]
    assert summary["counts"] == {"passed": 0, "failed": 0, "not exercised": 7}
    assert proc.returncode == 0 and "passed" not in proc.stdout.split("== summary")[1].replace("did not pass", "")


def test_tf32_is_off_only_inside_the_parity_block() -> None:
    sys.path.insert(0, str(REPO))
    from bench.device_check import tf32_off, tf32_settings

    before = tf32_settings()
    with tf32_off():
        assert tf32_settings() == {"cudnn": False, "matmul": False}
    assert tf32_settings() == before


def test_asking_for_cuda_without_it_exits_4(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the real check would run")
    proc = run_check(tmp_path, "--device cuda", timeout=300)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "no CUDA device here" in (tmp_path / "device_check.log").read_text()


def test_passed_means_every_step_ran_and_passed_else_partial_with_counts() -> None:
    """Issue 25 item 8: a check whose TensorRT steps were not exercised is ``partial``, never ``passed``."""
    from bench.device_check import STEPS, verdict

    ok = {"status": "passed"}
    assert verdict(dict.fromkeys(STEPS, ok)) == ("passed", {"passed": 7, "failed": 0, "not exercised": 0})
    some = {**dict.fromkeys(STEPS[:5], ok), "trt_multiscale": {"status": "not exercised"}}
    assert verdict(some) == ("partial", {"passed": 5, "failed": 0, "not exercised": 2})  # trt_int8 never reached
    assert verdict({**some, "digits": {"status": "failed"}})[0] == "failed"
