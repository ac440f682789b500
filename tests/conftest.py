"""Shared fixtures: real artifacts built once per session (a small trained digits model, sample photos)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import resnet
from resnet.samples import DIGIT_LABELS, digits_images, sample_photo_paths
from tests.serve_support import Server, export_onnx
from tests.weights_support import write_fake_r18

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def photo_paths() -> list[Path]:
    """scikit-image's bundled sample photos (real JPEG/PNG files)."""
    paths = sample_photo_paths()
    assert len(paths) >= 8
    return paths


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-8 (CIFAR family) trained for 300 iterations on the real digits: a small, real, trained model.

    About 99% held-out ten-crop accuracy (lr 0.1, divided by 10 at 200 and 260 iterations, flip augmentation: the
    paper's schedule in miniature). Saved in our checkpoint format with a complete card (labels "0".."9", 32x32, digits mean/std).
    """
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x, y = digits_images("train")
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    mean = xt.mean(dim=(0, 2, 3))
    std = xt.std(dim=(0, 2, 3))
    xt = (xt - mean[:, None, None]) / std[:, None, None]
    yt = torch.from_numpy(y)
    model = resnet.create_model("cifar_resnet8", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[200, 260], gamma=0.1)
    model.train()
    for _ in range(300):
        idx = torch.randint(len(yt), (64,), generator=generator)
        batch = xt[idx]
        flip = torch.rand(64, generator=generator) < 0.5  # the paper's flip augmentation, so ten-crop's flips fit
        batch[flip] = batch[flip].flip(-1)
        loss = torch.nn.functional.cross_entropy(model(batch), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()
    card = resnet.make_card(
        "cifar_resnet8",
        name="digits-resnet8",
        labels=list(DIGIT_LABELS),
        mean=mean.tolist(),
        std=std.tolist(),
        provenance={"dataset": "sklearn digits (train split)", "note": "test fixture"},
    )
    path = tmp_path_factory.mktemp("digits") / "model.pt"
    resnet.save_checkpoint(path, model, card)
    return path


@pytest.fixture(scope="session")
def digits_test_images() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits: [N, 32, 32, 3] uint8 images and labels."""
    return digits_images("test")


@pytest.fixture(scope="module")
def onnx_server(digits_onnx_model: Path) -> Iterator[Server]:
    """The digits model exported to ONNX, served with the default settings (ONNX Runtime, JPEG draft mode on)."""
    server = Server(["--model", str(digits_onnx_model)], log_path=digits_onnx_model.parent / "server.log").start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def digits_onnx_model(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits model exported to ONNX, once per test module that asks (each module gets its own folder)."""
    return export_onnx(digits_checkpoint, tmp_path_factory.mktemp("onnx") / "digits.onnx")


@pytest.fixture(scope="module")
def hardened_server(digits_onnx_model: Path) -> Iterator[Server]:
    """The digits ONNX model served with short header-read and keep-alive timeouts (1.5 s, 1 s)."""
    srv = Server(
        ["--model", str(digits_onnx_model), "--header-timeout-s", "1.5", "--keep-alive-timeout-s", "1"],
        log_path=digits_onnx_model.parent / "server.log",
    ).start()
    yield srv
    srv.stop()


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty temporary ``TORCH_HOME`` (the torch hub cache is ``<it>/hub/checkpoints``); subprocesses inherit it."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture()
def cached_r18(torch_home: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A real resnet18 state dict (random init, seed 0) at the path torch.hub would cache IMAGENET1K_V1 under."""
    return write_fake_r18(torch_home)
