"""`python -m resnet.summary`: measured parameters and multiply-adds within 3% of the paper's tables."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision

from resnet.summary import PAPER_CIFAR_MPARAMS, PAPER_IMAGENET_GMACS, summary_rows


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    return {r["model"]: r for r in summary_rows()}


@pytest.mark.parametrize("depth", sorted(PAPER_IMAGENET_GMACS))
def test_imagenet_multiply_adds_within_3_percent_of_table_1(rows: dict, depth: int) -> None:
    row = rows[f"resnet{depth}"]
    assert abs(row["gmacs_v1"] - PAPER_IMAGENET_GMACS[depth]) / PAPER_IMAGENET_GMACS[depth] <= 0.03


@pytest.mark.parametrize("depth", sorted(PAPER_CIFAR_MPARAMS))
def test_cifar_parameters_within_3_percent_of_table_6(rows: dict, depth: int) -> None:
    row = rows[f"cifar_resnet{depth}"]
    assert abs(row["params_m"] - PAPER_CIFAR_MPARAMS[depth]) / PAPER_CIFAR_MPARAMS[depth] <= 0.03


@pytest.mark.parametrize("depth", sorted(PAPER_IMAGENET_GMACS))
def test_imagenet_parameters_equal_torchvision_exactly(rows: dict, depth: int) -> None:
    with torch.device("meta"):
        tv = getattr(torchvision.models, f"resnet{depth}")()
    assert round(rows[f"resnet{depth}"]["params_m"] * 1e6) == sum(p.numel() for p in tv.parameters())


def test_summary_cli_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "resnet.summary", "--cifar-depths", "20", "56"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    for name in ["resnet18", "resnet152", "cifar_resnet20", "cifar_resnet56"]:
        assert name in out.stdout
    assert "GMACs" in out.stdout
