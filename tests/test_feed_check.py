"""The device feed's load-time check against the host path (``resnet.runtime.feed_check``): a feed that agrees is
kept and says by how much; one that cuts, mirrors or normalises wrongly, whose copy never lands, whose runner reads
the wrong input, or that fails, is dropped under ``auto`` (the host path serves) and refused under ``on``. On CUDA
when torch sees it (the runner's own device), else the same code on CPU tensors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import resnet
from resnet.runtime.device_feed import attach_feed, confirm_feed
from resnet.runtime.feed_check import check_feed, probe_crops, probe_rows
from resnet.runtime.openers import open_runner


def test_a_feed_that_agrees_is_kept_and_says_by_how_much(digits_checkpoint: Path, digits_onnx_model: Path) -> None:
    for artifact in (digits_checkpoint, digits_onnx_model):
        runner = open_runner(artifact)
        why = attach_feed(runner, "on")
        check = runner.feed.check
        assert runner.device_side and check is not None and check.passed, why
        assert "checked at load: device crops within" in why and check.describe() in why
        assert check.crops_diff <= check.crops_tolerance and check.logits_diff <= check.logits_tolerance
        runner.close()


@pytest.mark.parametrize("arch", ["resnet50", "cifar_resnet20"])
def test_the_probe_shows_every_crop_offset_and_the_mirror(arch: str) -> None:
    """The probe image is wide and odd, so no two of its ten crops are equal (where the card's resize is larger
    than its crop): a crop cut at another offset, or a mirror missed, changes the rows the check compares."""
    card = resnet.make_card(arch, **({"resize_size": 36} if arch.startswith("cifar") else {}))
    rows = probe_rows(card)
    assert rows.pixels.shape[0] == card.resize_size and rows.pixels.shape[1] % 2 == 1
    crops = probe_crops(rows, card).reshape(10, -1)
    assert all(not np.array_equal(crops[i], crops[j]) for i in range(10) for j in range(i + 1, 10))


def _mirror_first(runner) -> None:
    crops = runner.feed.pre.crops
    runner.feed.pre.crops = lambda image, protocol="ten": crops(image, protocol).roll(5, dims=0)


def _mean_off_by_one_level(runner) -> None:
    runner.feed.pre.mean = runner.feed.pre.mean + 1.0 / 255.0


def _copy_never_landed(runner) -> None:
    cut = runner.feed.pre.cut
    runner.feed.pre.cut = lambda batch: torch.zeros_like(cut(batch))


def _reads_the_wrong_input(runner) -> None:  # on an ONNX Runtime runner, whose host path does not use run_device
    run_device = runner.run_device
    runner.run_device = lambda x: run_device(torch.zeros_like(x))


def _device_fault(runner) -> None:
    def cut(batch):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    runner.feed.pre.cut = cut


FAULTS = [_mirror_first, _mean_off_by_one_level, _copy_never_landed, _reads_the_wrong_input, _device_fault]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__.strip("_"))
def test_a_feed_that_disagrees_is_dropped_under_auto_and_refused_under_on(
    digits_checkpoint: Path, digits_onnx_model: Path, fault: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    runner = open_runner(digits_onnx_model if fault is _reads_the_wrong_input else digits_checkpoint)
    host = probe_crops(probe_rows(runner.card), runner.card)
    want = runner.run(host)
    attach_feed(runner, "on")
    feed = runner.feed
    fault(runner)
    with pytest.raises(resnet.ParityError, match="^--device-preprocess on: crops cut and normalised on") as e:
        confirm_feed(runner, "on")
    assert "--device-preprocess off" in str(e.value) and "\n" not in str(e.value) and runner.feed is None

    runner.use_feed(feed)
    with caplog.at_level(logging.WARNING, logger="resnet.runtime.device_feed"):
        why = confirm_feed(runner, "auto")
    assert why.startswith("preprocessing on the host (the crops cut and normalised on"), why
    assert runner.feed is None and not runner.device_side and "please report it" in caplog.text
    vars(runner).pop("run_device", None)  # the host path of a runner whose device run was broken
    assert np.array_equal(runner.run(host), want)  # the host path serves, as before the feed


def test_the_check_compares_in_the_feeds_dtype(digits_checkpoint: Path) -> None:
    """A half-precision feed is held to two units in the last place of its dtype, not float32's."""
    runner = open_runner(digits_checkpoint, precision="bf16")
    attach_feed(runner, "on")
    runner.feed.dtype = torch.bfloat16  # as a bf16 runner's feed is on CUDA (the CPU keeps float32 input + autocast)
    check = check_feed(runner)
    limit = float(np.abs(probe_crops(probe_rows(runner.card), runner.card)).max())
    assert check.crops_tolerance == pytest.approx(2 * torch.finfo(torch.bfloat16).eps * max(1.0, limit))
    assert check.passed and check.logits_tolerance == 1e-2, check


def test_a_graph_of_fixed_batch_is_checked_within_its_batch(digits_checkpoint: Path, tmp_path: Path) -> None:
    """A graph whose batch is fixed (here at 4 crops) takes no batch of ten: the probe fills its batch instead."""
    import onnx

    from resnet.onnx_card import set_onnx_card

    model, card = resnet.load_checkpoint(digits_checkpoint)
    path = tmp_path / "fixed4.onnx"
    size = card.input_size
    torch.onnx.export(model, torch.zeros(4, 3, size, size), str(path), input_names=["input"], dynamo=False)
    proto = onnx.load(str(path))
    set_onnx_card(proto, card)
    onnx.save(proto, str(path))
    runner = open_runner(path)
    assert runner.max_batch == runner.min_batch == 4
    why = attach_feed(runner, "on")
    assert runner.feed is not None and runner.feed.check.passed, why
