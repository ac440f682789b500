"""Issue 25 on the CPU: what each provider is offered, what a GPU session is told (TF32, cache key, profile), and
that the GPU image reads a card without the ``onnx`` package. What only a GPU with TensorRT can prove is in
tests/test_runtime_gpu.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_torch_free_serve import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_the_card_is_read_without_the_onnx_package(tiny: tuple[Path, Path]) -> None:
    """Issue 25 item 4: the [serve-gpu] image has no ``onnx``; it must still read the card to gate on a GPU."""
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "from resnet import artifacts\n"
        f"card = artifacts.read_card({str(tiny[1])!r})\n"
        "print(card.precision, card.input_size)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path.cwd(), timeout=120)
    assert done.returncode == 0, done.stderr[-800:]
    assert done.stdout.split()[0] == "fp32"
