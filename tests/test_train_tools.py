"""train.evaluate, train.plot, train.analyze on a real (briefly) trained digits run, and the recipes' numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import resnet
from resnet.samples import write_digits_imagefolder
from train.cifar import main as cifar_main
from train.recipes import CIFAR, DIGITS, IMAGENET, cifar_recipe_for_depth
from train.schedule import LRSchedule


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """ResNet-8 and plain-8 on digits, 4 iterations each (real runs with metrics.jsonl and model.pt)."""
    root = tmp_path_factory.mktemp("runs")
    base = [
        "--dataset",
        "digits",
        "--depth",
        "8",
        "--batch-size",
        "32",
        "--max-iters",
        "4",
        "--eval-every",
        "2",
        "--log-every",
        "1",
        "--eval-crops",
        "center",
        "--no-tensorboard",
        "--progress",
        "lines",
    ]
    assert cifar_main(base + ["--out", str(root / "resnet8")]) == 0
    assert cifar_main(base + ["--plain", "--out", str(root / "plain8")]) == 0
    return root / "resnet8", root / "plain8"


def test_evaluate_reproduces_the_cards_metrics(two_runs, capsys: pytest.CaptureFixture[str]) -> None:
    from train.evaluate import main

    run = two_runs[0]
    _, card = resnet.load_checkpoint(run / "model.pt")
    assert main([str(run / "model.pt"), "--dataset", "digits", "--crops", "center", "--json", "--workers", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 360 and out["top1_err"] == card.metrics["top1_err"]
    assert out["top5_err"] == card.metrics["top5_err"] and out["protocol"] == card.metrics["protocol"]


def test_evaluate_on_image_folder_with_ten_crops(two_runs, tmp_path: Path, capsys) -> None:
    from train.evaluate import main

    write_digits_imagefolder(tmp_path / "digits", "test", limit=30)
    assert main([str(two_runs[0] / "model.pt"), "--data", str(tmp_path / "digits"), "--workers", "0"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("digits-cifar_resnet8: top-1 err ") and line.endswith(
        f"(10-crop, {tmp_path / 'digits'} (30 images))"
    )


def test_evaluate_names_an_unreadable_image_in_one_line(two_runs, tmp_path: Path, capsys) -> None:
    """A damaged image in a DataLoader worker used to come back as a multi-line worker traceback."""
    from train.evaluate import main

    write_digits_imagefolder(tmp_path / "digits", "test", limit=12)
    broken = sorted((tmp_path / "digits" / "3").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:40])
    assert main([str(two_runs[0] / "model.pt"), "--data", str(tmp_path / "digits"), "--workers", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"train.evaluate: error: {broken}: ") and len(err.splitlines()) == 1, err


def test_evaluate_missing_checkpoint_is_one_line_exit_1(tmp_path: Path, capsys) -> None:
    from train.evaluate import main

    assert main([str(tmp_path / "nope.pt"), "--dataset", "digits"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"train.evaluate: error: no such file: {tmp_path / 'nope.pt'}"


def test_plot_draws_several_runs_on_one_png(two_runs, tmp_path: Path) -> None:
    from train.plot import load_curves, main

    out = tmp_path / "curves.png"
    assert main([str(two_runs[0]), str(two_runs[1]), "-o", str(out), "--labels", "ResNet-8,plain-8"]) == 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (700, 450)
    train, val = load_curves(two_runs[0])
    assert [s for s, _ in train] == [1, 2, 3, 4] and [s for s, _ in val] == [2, 4]


def test_plot_rejects_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    from train.plot import main

    assert main([str(tmp_path), "-o", str(tmp_path / "x.png")]) == 1
    assert "is not a run folder (no metrics.jsonl)" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_analyze_responses_hooks_every_3x3_layer(two_runs, tmp_path: Path) -> None:
    from train.analyze import layer_response_stds, main

    out, js = tmp_path / "resp.png", tmp_path / "resp.json"
    assert (
        main(
            [
                "responses",
                str(two_runs[0] / "model.pt"),
                str(two_runs[1] / "model.pt"),
                "-o",
                str(out),
                "--labels",
                "resnet-8,plain-8",
                "--images",
                "50",
                "--json",
                str(js),
            ]
        )
        == 0
    )
    data = json.loads(js.read_text())
    names = ["bn1"] + [f"layer{s}.0.bn{i}" for s in (1, 2, 3) for i in (1, 2)]
    assert list(data["resnet-8"]) == names and list(data["plain-8"]) == names
    assert all(v > 0 for v in data["plain-8"].values())
    assert out.stat().st_size > 1000
    # the hook sees BN's output, before the residual addition and the ReLU: std of bn2 != std of the block output
    model, _ = resnet.load_checkpoint(two_runs[0] / "model.pt")
    x = torch.randn(8, 3, 32, 32)
    std_bn2 = dict(layer_response_stds(model, x))["layer1.0.bn2"]
    with torch.no_grad():
        block_in = model.relu(model.bn1(model.conv1(x)))
        bn2 = model.layer1[0].bn2(
            model.layer1[0].conv2(model.layer1[0].relu(model.layer1[0].bn1(model.layer1[0].conv1(block_in))))
        )
    expected = bn2.transpose(0, 1).reshape(16, -1).double().std(dim=1).mean().item()
    assert abs(std_bn2 - expected) < 1e-6


def test_recipes_carry_the_papers_numbers() -> None:
    assert (IMAGENET.batch_size, IMAGENET.lr, IMAGENET.momentum, IMAGENET.weight_decay) == (256, 0.1, 0.9, 1e-4)
    assert IMAGENET.plateau and IMAGENET.max_iters == 600_000 and IMAGENET.augment == "imagenet"
    assert (CIFAR.batch_size, CIFAR.lr, CIFAR.milestones, CIFAR.max_iters) == (128, 0.1, (32_000, 48_000), 64_000)
    assert CIFAR.val_size == 5_000 and CIFAR.weight_decay == 1e-4
    assert cifar_recipe_for_depth(CIFAR, 110).warmup_lr == pytest.approx(0.01)
    assert cifar_recipe_for_depth(CIFAR, 56).warmup_lr is None
    assert DIGITS.family == "cifar" and DIGITS.default_depth == 20


def test_lr_scales_linearly_with_global_batch() -> None:
    from train.cli import parse_args
    from train.loop import resolve_recipe

    args = parse_args(["--batch-size", "512", "--data", "x"], "t", "imagenet", "imagenet")
    assert resolve_recipe(args).lr == pytest.approx(0.2)
    args = parse_args(["--batch-size", "512", "--lr", "0.05", "--data", "x"], "t", "imagenet", "imagenet")
    assert resolve_recipe(args).lr == pytest.approx(0.05)


def test_schedule_milestones_warmup_and_plateau() -> None:
    s = LRSchedule(0.1, milestones=(32_000, 48_000))
    assert [s.lr_at(i) for i in (0, 31_999, 32_000, 48_000)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    w = LRSchedule(0.1, warmup_lr=0.01, warmup_until_err=80.0, warmup_max_iters=400)
    assert w.lr_at(10) == 0.01 and not w.observe_train_err(10, 85.0) and w.lr_at(11) == 0.01
    assert w.observe_train_err(12, 79.0) and w.lr_at(13) == pytest.approx(0.1)
    p = LRSchedule(0.1, plateau=True, patience=2)
    assert not p.observe_val_err(50.0) and not p.observe_val_err(50.0) and p.observe_val_err(50.0)
    assert p.lr_at(0) == pytest.approx(0.01)
    q = LRSchedule(0.1, plateau=True, patience=2)
    q.load_state_dict(p.state_dict())
    assert q.lr_at(0) == pytest.approx(0.01)
