"""Device-side preprocessing (crops, mirrors, normalisation in torch) equals the CPU path ``resnet.preprocess``.

On CPU tensors everywhere (the same code path the GPU runs); on CUDA too when a GPU is present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnet
from resnet.device_preprocess import DevicePreprocess
from resnet.preprocess import decode_image, resized_size, softmax
from resnet.runtime.crops import CROP_PROTOCOLS, TEN_CROPS, crop_protocol

IMAGENET = resnet.make_card("resnet50")
CIFAR = resnet.make_card("cifar_resnet20", resize_size=36)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def resized(path: Path, card) -> np.ndarray:
    """The host's share of the device path: decode + resize, as uint8 HWC."""
    img = decode_image(path.read_bytes(), card.resize_size, draft=False)
    target = resized_size(*img.size, card.resize_size)
    return np.asarray(img.resize(target, Image.Resampling.BILINEAR) if target != img.size else img, np.uint8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("crops", ["ten", "center"])
@pytest.mark.parametrize("card", [IMAGENET, CIFAR], ids=["imagenet", "cifar"])
def test_device_crops_equal_the_cpu_path(photo_paths: list[Path], crops: str, card, device: str) -> None:
    pre = DevicePreprocess(card, device)
    images = [resized(p, card) for p in photo_paths]
    got = pre.batch(images, crops).float().cpu().numpy()
    want = np.concatenate([resnet.preprocess(p.read_bytes(), card, crops, draft=False) for p in photo_paths])
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_host_uint8_crops_normalised_on_the_device_equal_the_cpu_path(photo_paths: list[Path], device: str) -> None:
    pre = DevicePreprocess(IMAGENET, device)
    for path in photo_paths[:3]:
        u8 = pre.host_crops(resized(path, IMAGENET), "ten")
        assert u8.dtype == np.uint8 and u8.shape == (TEN_CROPS, 3, 224, 224)
        got = pre.normalise(pre.upload(u8)).cpu().numpy()
        assert np.abs(got - resnet.preprocess(path.read_bytes(), IMAGENET, "ten", draft=False)).max() <= 1e-6


def test_half_precision_output_and_channels_last() -> None:
    pre = DevicePreprocess(IMAGENET, "cpu")
    img = np.random.default_rng(0).integers(0, 256, (256, 300, 3), dtype=np.uint8)
    x = pre.batch([img], "center", dtype=torch.bfloat16)
    assert x.dtype == torch.bfloat16 and x.shape == (1, 3, 224, 224)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_multiscale_is_not_a_fixed_crop() -> None:
    with pytest.raises(ValueError, match="crops must be one of ten, center"):
        DevicePreprocess(IMAGENET).crops(torch.zeros(3, 256, 256, dtype=torch.uint8), "multiscale")


def test_protocols_combine_their_views_as_the_mean_softmax() -> None:
    rng = np.random.default_rng(1)
    ten = rng.standard_normal((TEN_CROPS, 7))
    assert np.allclose(crop_protocol("ten").combine([ten]), resnet.crop_probabilities(ten, TEN_CROPS)[0])
    views = [rng.standard_normal((2, 7)) for _ in range(3)]
    want = softmax(np.concatenate(views)).mean(axis=0)
    assert np.allclose(crop_protocol("multiscale").combine(views), want)
    assert crop_protocol(CROP_PROTOCOLS["center"]) is CROP_PROTOCOLS["center"]
    assert crop_protocol("ten").describe(3, "photos") == "10-crop, photos (3 images)"
    assert (
        crop_protocol("multiscale").describe(3, "photos", (224, 256))
        == "multi-scale 224/256 + flips, photos (3 images)"
    )
    with pytest.raises(ValueError, match="crops must be one of ten, center, multiscale"):
        crop_protocol("five")
