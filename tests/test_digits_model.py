"""The shared trained fixture is a real model: through the shared preprocessing it classifies held-out digits."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import resnet


def test_trained_digits_model_classifies_held_out_digits_through_ten_crop(
    digits_checkpoint: Path, digits_test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    model, card = resnet.load_checkpoint(digits_checkpoint)
    images, labels = digits_test_images
    crops = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        crops.append(resnet.preprocess(buf.getvalue(), card, "ten"))
    with torch.no_grad():
        logits = model(torch.from_numpy(np.concatenate(crops))).numpy()
    predictions = resnet.crop_probabilities(logits, 10).argmax(1)
    accuracy = (predictions == labels).mean()
    assert accuracy >= 0.97, accuracy  # measured 99.4%
