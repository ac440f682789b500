"""Training runs on the real digits: the run folder, exact resume, SIGTERM/SIGKILL, NaN, ImageFolder training."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import resnet
from resnet.samples import digits_images, write_digits_imagefolder
from train.cifar import main as cifar_main
from train.data import channel_stats
from train.state import load_state

REPO = Path(__file__).resolve().parent.parent
# --amp off: these tests are about runs, not precision; --amp auto's timing has its own test
TINY = ["--dataset", "digits", "--depth", "8", "--batch-size", "32", "--progress", "lines", "--amp", "off"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real training run: ResNet-8 on digits, 6 iterations, validation every 3, ten-crop test."""
    out = tmp_path_factory.mktemp("run") / "digits-r8"
    assert (
        cifar_main(
            TINY + ["--max-iters", "6", "--eval-every", "3", "--save-every", "2", "--log-every", "2", "--out", str(out)]
        )
        == 0
    )
    return out


def test_run_folder_explains_itself(digits_run: Path) -> None:
    args = json.loads((digits_run / "args.json").read_text())
    assert args["dataset"] == "digits" and args["model"] == "cifar_resnet8" and args["recipe"]["weight_decay"] == 1e-4
    recs = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    val = [r for r in recs if r["kind"] == "val"]
    assert [r["step"] for r in train] == [2, 4, 6] and [r["step"] for r in val] == [3, 6]
    assert all(r["data_time"] >= 0 and r["compute_time"] > 0 and 0 <= r["err"] <= 100 for r in train)
    assert all(r["images"] == 144 for r in val)  # the held-out validation split, counted once
    assert list((digits_run / "tb").glob("events.out.tfevents.*"))
    state = load_state(digits_run / "last.pt")
    assert state["step"] == 6 and set(state["optimizer"]["state"])  # momentum buffers saved
    assert torch.load(digits_run / "last.pt", weights_only=True)["format"] == "resnet-train-state"


def test_final_checkpoint_has_complete_card_and_loads(digits_run: Path) -> None:
    model, card = resnet.load_checkpoint(digits_run / "model.pt")
    assert card.family == "cifar" and card.depth == 8 and card.labels == tuple(str(i) for i in range(10))
    assert card.input_size == 32 and card.resize_size == 32
    mean, std = channel_stats(digits_images("train")[0])
    assert np.allclose(card.mean, mean) and np.allclose(card.std, std)
    assert set(card.metrics) == {"top1_err", "top5_err", "protocol"}
    assert card.metrics["protocol"] == "10-crop, digits test split (360 images)"
    assert {"commit", "created", "args", "dataset"} <= set(card.provenance)
    assert card.provenance["iterations"] == 6
    _, best = resnet.load_checkpoint(digits_run / "best.pt")
    assert best.metrics["protocol"].startswith("center crop, validation split (144 images)")
    summary = json.loads((digits_run / "summary.json").read_text())
    assert summary["metrics"] == card.metrics and summary["replicas_identical"]


def test_stopped_and_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    # 96 training images / batch 32 = 3 iterations per epoch: the run stops mid-epoch 1 and resumes there
    args = TINY + [
        "--train-limit",
        "96",
        "--max-iters",
        "8",
        "--eval-every",
        "3",
        "--save-every",
        "0",
        "--eval-crops",
        "center",
        "--deterministic",
        "--no-tensorboard",
    ]
    assert cifar_main(args + ["--out", str(tmp_path / "whole")]) == 0
    assert cifar_main(args + ["--out", str(tmp_path / "split"), "--stop-at-iter", "4"]) == 0
    state = load_state(tmp_path / "split" / "last.pt")
    assert (state["step"], state["epoch"], state["sampler"]["start"]) == (4, 1, 32)
    assert not (tmp_path / "split" / "model.pt").exists()
    assert cifar_main(args + ["--out", str(tmp_path / "split")]) == 0  # auto-resume from last.pt
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    va = [
        r
        for r in map(json.loads, (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "val"
    ]
    vb = [
        r
        for r in map(json.loads, (tmp_path / "split" / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "val"
    ]
    assert va[-1]["loss"] == vb[-1]["loss"]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "train.cifar",
        *TINY,
        "--max-iters",
        "100000",
        "--log-every",
        "1",
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"no {prefix!r} line; stderr: {proc.stderr.read()}")


def test_sigterm_saves_last_pt_and_exits_cleanly_then_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start(out, "--save-every", "0")
    _wait_for_line(proc, "iter 2/")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by signal SIGTERM" in stdout and "Traceback" not in stderr
    step = load_state(out / "last.pt")["step"]
    assert step >= 2
    assert cifar_main(TINY + ["--max-iters", str(step + 1), "--eval-crops", "center", "--out", str(out)]) == 0
    _, card = resnet.load_checkpoint(out / "model.pt")
    assert card.provenance["iterations"] == step + 1


def test_sigkill_while_writing_leaves_loadable_last_pt(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start(out, "--save-every", "1", "--batch-size", "8")
    _wait_for_line(proc, "iter 3/")  # logged just before last.pt of iteration 3 is written
    proc.kill()
    proc.wait(timeout=60)
    state = load_state(out / "last.pt")
    assert state["step"] >= 2
    model = resnet.create_model("cifar_resnet8")
    model.load_state_dict(state["model"])


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert cifar_main(TINY + ["--lr", "1e30", "--max-iters", "50", "--save-every", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.cifar: error: ") and ("loss is nan" in err or "non-finite" in err)
    assert len(err.splitlines()) == 1
    state = load_state(out / "last.pt")
    assert state["step"] >= 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "model.pt").exists()


def test_imagenet_command_trains_on_an_image_folder(tmp_path: Path) -> None:
    from train.imagenet import main as imagenet_main

    write_digits_imagefolder(tmp_path / "data" / "train", "train", limit=100)
    write_digits_imagefolder(tmp_path / "data" / "val", "test", limit=100)
    out = tmp_path / "run"
    assert (
        imagenet_main(
            [
                "--data",
                str(tmp_path / "data"),
                "--depth",
                "18",
                "--input-size",
                "32",
                "--batch-size",
                "8",
                "--max-iters",
                "2",
                "--eval-crops",
                "center",
                "--workers",
                "1",
                "--out",
                str(out),
                "--progress",
                "lines",
            ]
        )
        == 0
    )
    model, card = resnet.load_checkpoint(out / "model.pt")
    assert card.family == "imagenet" and card.depth == 18 and card.labels == tuple(str(i) for i in range(10))
    assert card.input_size == 32 and card.resize_size == 37
    assert card.metrics["protocol"] == "center crop, validation folder (100 images)"


def _stopped_run(out: Path) -> bytes:
    """A real run stopped after 2 iterations: its last.pt bytes."""
    assert cifar_main(TINY + ["--max-iters", "4", "--stop-at-iter", "2", "--out", str(out)]) == 0
    return (out / "last.pt").read_bytes()


def test_damaged_last_pt_fails_resume_in_one_line_and_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    good = _stopped_run(out)
    state = torch.load(out / "last.pt", weights_only=True)
    state["optimizer"]["param_groups"] = []  # loads as a dict, but does not fit the run's optimiser
    resnet.atomic_save(state, out / "last.pt")
    damaged = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert cifar_main(TINY + ["--max-iters", "4", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.cifar: error: ") and "damaged training state" in err and len(err.splitlines()) == 1
    assert (out / "last.pt").read_bytes() == damaged and not (out / "model.pt").exists()
    (out / "last.pt").write_bytes(good[: len(good) // 3])  # cut short, as by a full disk
    assert cifar_main(TINY + ["--max-iters", "4", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "is truncated" in err and len(err.splitlines()) == 1
    assert (out / "last.pt").read_bytes() == good[: len(good) // 3]


def test_resume_from_a_damaged_file_never_touches_the_good_last_pt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    good = _stopped_run(out)
    bad = tmp_path / "other.pt"
    bad.write_bytes(b"\x80\x02" + bytes(range(256)))
    assert cifar_main(TINY + ["--max-iters", "4", "--resume", str(bad), "--out", str(out)]) == 1
    assert "not a checkpoint" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == good


def test_amp_auto_on_cpu_is_decided_by_timing_and_kept_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = TINY[:-2] + ["--amp", "auto", "--batch-size", "16", "--max-iters", "2", "--eval-crops", "center"]
    assert cifar_main(args + ["--stop-at-iter", "1", "--no-tensorboard", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    timed = re.search(
        r"^amp auto: timed (\d+) training steps each at batch 16x3x32x32 on this CPU: "
        r"fp32 ([\d.]+) ms, bf16 ([\d.]+) ms per step -> (bf16|off \(fp32\))$",
        log,
        re.MULTILINE,
    )
    assert timed, log
    fp32, bf16 = float(timed[2]), float(timed[3])
    choice = "bf16" if timed[4] == "bf16" else "off"
    assert int(timed[1]) >= 2 and choice == ("bf16" if bf16 < fp32 else "off")
    assert f"amp: {choice}; channels_last: {choice == 'bf16'}" in log
    assert json.loads((out / "args.json").read_text())["amp_resolved"] == choice
    assert json.loads(load_state(out / "last.pt")["args_json"])["amp_resolved"] == choice
    assert cifar_main(args + ["--no-tensorboard", "--out", str(out)]) == 0  # resumes: no second timing
    log = capsys.readouterr().out
    assert f"amp auto: {choice}, as timed when this run started" in log and "amp auto: timed" not in log
    assert "resumed from" in log
