"""Scale-out: two CPU ranks (gloo) under the real torchrun end with identical weights and count each image once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import resnet
from train.distributed import weights_digest

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")


def test_torchrun_two_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        str(TORCHRUN),
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "train.cifar",
        "--dataset",
        "digits",
        "--depth",
        "8",
        "--batch-size",
        "32",
        "--max-iters",
        "4",
        "--val-size",
        "201",
        "--eval-every",
        "2",
        "--log-every",
        "2",
        "--eval-crops",
        "center",
        "--sync-bn",
        "--no-tensorboard",
        "--progress",
        "lines",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["replica_weight_digests"]) == 2
    assert summary["replicas_identical"] and len(set(summary["replica_weight_digests"])) == 1
    model, card = resnet.load_checkpoint(out / "model.pt")  # written by rank 0 only
    assert weights_digest(model) == summary["replica_weight_digests"][0]
    assert card.provenance["world_size"] == 2
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # 201 validation (shards of 101 and 100: one more batch on rank 0, which must not hang) and 360 test images
    # split over 2 ranks without padding: each counted exactly once
    assert [r["images"] for r in recs if r["kind"] == "val"] == [201, 201]
    assert [r["images"] for r in recs if r["kind"] == "test"] == [360]
    # each training step saw the global batch: 32 images = 16 per rank, all-reduced
    assert all(r["img_per_s"] > 0 for r in recs if r["kind"] == "train")
    assert proc.stdout.count("val iter 2:") == 1  # only rank 0 prints
    assert "--sync-bn skipped" in proc.stdout
    assert "wrote " in proc.stdout  # the last line before the worker's os._exit was flushed
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 4 and not list(out.glob(".*.tmp"))


EXIT_SCRIPT = """
import atexit, logging, sys
from train.distributed import exit_code
logging.basicConfig(stream=sys.stderr, format="%(message)s")
atexit.register(lambda: print("interpreter teardown ran", file=sys.stderr))
print("last words", end="")  # no newline: still in stdout's buffer (a pipe)
logging.getLogger("run").warning("logged before exit")
raise SystemExit(exit_code(7))
"""


def _run_exit_script(world_size: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    if world_size is not None:
        env["WORLD_SIZE"] = world_size
    return subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )


def test_a_torchrun_worker_ends_flushed_without_interpreter_teardown() -> None:
    """CI saw rank 1 of a finished run abort (SIGABRT) in Python's teardown: a gloo thread that DDP kept alive
    released a collective's tensors after finalization began. A worker now ends with os._exit once all is written."""
    proc = _run_exit_script("2")
    assert proc.returncode == 7
    assert proc.stdout == "last words" and "logged before exit" in proc.stderr
    assert "interpreter teardown ran" not in proc.stderr


def test_outside_torchrun_the_process_exits_as_usual() -> None:
    for world_size in (None, "1"):
        proc = _run_exit_script(world_size)
        assert proc.returncode == 7 and proc.stdout == "last words"
        assert "logged before exit" in proc.stderr and "interpreter teardown ran" in proc.stderr
