"""The paper's multi-scale test (resnet.multiscale) and ``train.evaluate --crops multiscale|all`` on real images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import resnet
from resnet.multiscale import (
    CIFAR_SIDES,
    PAPER_SIDES,
    multiscale_probabilities,
    multiscale_sides,
    multiscale_views,
    view_pixels,
)
from resnet.preprocess import ImageTooLargeError, softmax
from train import evaluate


def test_sides_follow_the_paper_and_the_card() -> None:
    assert multiscale_sides(resnet.make_card("resnet50")) == PAPER_SIDES == (224, 256, 384, 480, 640)
    half = resnet.make_card("resnet50", input_size=112, resize_size=128)
    assert multiscale_sides(half) == (112, 128, 192, 240, 320)  # scaled by input_size / 224
    assert multiscale_sides(resnet.make_card("cifar_resnet20")) == CIFAR_SIDES == (28, 32, 36)
    assert multiscale_sides(resnet.make_card("resnet50"), sides=[480, 224, 224]) == (224, 480)
    with pytest.raises(ValueError):
        multiscale_sides(resnet.make_card("resnet50"), sides=[0])


def test_views_are_torchvision_resize_of_the_whole_image_and_its_mirror(photo_paths: list[Path]) -> None:
    card = resnet.make_card("resnet50")
    path = next(p for p in photo_paths if p.name == "chelsea.png")  # 451 x 300, landscape
    views = multiscale_views(path, card, draft=False)
    assert [v.shape for v in views] == [(2, 3, s, int(s * 451 / 300)) for s in PAPER_SIDES]
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in views)
    img = Image.open(path).convert("RGB")
    for side, v in zip(PAPER_SIDES, views):
        ref = transforms.Compose(
            [transforms.Resize(side), transforms.ToTensor(), transforms.Normalize(card.mean, card.std)]
        )(img).numpy()
        assert np.abs(v[0] - ref).max() <= 1e-5
        assert np.array_equal(v[1], v[0][:, :, ::-1])
    portrait = img.transpose(Image.Transpose.ROTATE_90)  # 300 x 451: the width is the shorter side
    views = multiscale_views(portrait, card, sides=[224], flip=False)
    assert views[0].shape == (1, 3, int(224 * 451 / 300), 224)


def test_scores_are_the_mean_softmax_over_every_view() -> None:
    rng = np.random.default_rng(0)
    per_image = [[rng.normal(size=(2, 5)) for _ in range(3)] for _ in range(4)]  # 4 images, 3 sides, 2 flips
    expected = np.stack([np.concatenate([softmax(x) for x in sides]).mean(axis=0) for sides in per_image])
    one_by_one = np.concatenate([multiscale_probabilities(sides) for sides in per_image])
    batched = multiscale_probabilities([np.concatenate([im[s] for im in per_image]) for s in range(3)], n_images=4)
    np.testing.assert_allclose(one_by_one, expected, rtol=1e-12)
    np.testing.assert_allclose(batched, expected, rtol=1e-12)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0)


def test_view_pixels_cap_refuses_a_panorama(tmp_path: Path) -> None:
    card = resnet.make_card("resnet50")
    Image.new("RGB", (4000, 400), (90, 120, 200)).save(tmp_path / "pano.png")
    assert view_pixels(4000, 400, PAPER_SIDES) > 16_000_000
    with pytest.raises(ImageTooLargeError, match="over the cap of 16000000"):
        multiscale_views(tmp_path / "pano.png", card)
    assert len(multiscale_views(tmp_path / "pano.png", card, sides=[224], max_view_pixels=None)) == 1


def test_resnet_is_fully_convolutional_on_every_view(photo_paths: list[Path]) -> None:
    torch.manual_seed(0)
    model = resnet.create_model("resnet18", zero_init_residual=True).eval()
    card = resnet.make_card("resnet18")
    views = multiscale_views(photo_paths[0], card, sides=[224, 320])
    with torch.no_grad():
        logits = [model(torch.from_numpy(v)).numpy() for v in views]
    probs = multiscale_probabilities(logits)
    assert probs.shape == (1, 1000) and np.isfinite(probs).all() and abs(probs.sum() - 1) < 1e-9


def test_multiscale_module_needs_no_torch() -> None:
    code = "import sys, resnet.multiscale; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_evaluate_all_prints_the_three_protocols_on_digits(
    digits_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    assert evaluate.main([str(digits_checkpoint), "--crops", "all", "--workers", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    results = {r["crops"]: r for r in out["results"]}
    assert set(results) == {"center", "ten", "multiscale"}
    assert all(r["images"] == 360 for r in results.values())
    assert results["multiscale"]["protocol"].startswith("multi-scale 28/32/36 + flips, digits test split")
    # the trained digits net: all three protocols are good (docs/networks.md records the figures)
    assert all(r["top1_err"] < 5.0 for r in results.values()), results
    assert evaluate.main([str(digits_checkpoint), "--crops", "multiscale", "--workers", "0", "--limit", "40"]) == 0
    assert "(multi-scale 28/32/36 + flips, digits test split (40 images))" in capsys.readouterr().out


def test_evaluate_multiscale_takes_sides_and_the_paper_ratios_hurt_a_32px_net(
    digits_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    """Explicit --sides are honoured; at the paper's ratios (x32/224) the 32-px digits net degrades, which is why
    CIFAR nets default to CIFAR_SIDES."""
    args = [str(digits_checkpoint), "--workers", "0", "--limit", "120", "--json"]
    assert evaluate.main([*args, "--crops", "multiscale", "--sides", "32,37,55,69,91"]) == 0
    paper = json.loads(capsys.readouterr().out)
    assert evaluate.main([*args, "--crops", "multiscale"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert paper["protocol"].startswith("multi-scale 32/37/55/69/91")
    assert ours["top1_err"] < paper["top1_err"]


def test_evaluate_sides_need_multiscale(digits_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    assert evaluate.main([str(digits_checkpoint), "--crops", "ten", "--sides", "32"]) == 2
    assert "--sides goes with" in capsys.readouterr().err
    assert evaluate.main([str(digits_checkpoint), "--crops", "multiscale", "--sides", "a,b"]) == 2


@pytest.mark.parametrize("crops", ["multiscale", "ten"])
def test_evaluate_names_an_unreadable_image_in_one_line(digits_checkpoint: Path, tmp_path: Path, crops: str) -> None:
    """A damaged file in the folder: exit 1 and one line naming it, also from a DataLoader worker (no traceback)."""
    data = tmp_path / "data"
    for label in ("0", "1"):
        (data / label).mkdir(parents=True)
        Image.new("RGB", (40, 36), (200, 30 * int(label), 40)).save(data / label / "ok.png")
    good = (data / "0" / "ok.png").read_bytes()
    (data / "1" / "broken.png").write_bytes(good[: len(good) // 2])
    argv = [str(digits_checkpoint), "--data", str(data), "--crops", crops, "--workers", "1", "--device", "cpu"]
    p = subprocess.run([sys.executable, "-m", "train.evaluate", *argv], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip()
    assert "broken.png" in err and "Traceback" not in err and len(err.splitlines()) == 1, err
