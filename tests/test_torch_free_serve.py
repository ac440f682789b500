"""Serving an ONNX export needs no torch: a server process in which ``import torch`` fails answers /classify with the
offline reference's probabilities, and a checkpoint there exits 4 with one line naming the install or the export.

The blocker is a folder first on PYTHONPATH whose ``torch``/``torchvision`` packages raise ImportError on import, so
the server's whole import chain (serve, resnet, preprocessing, KServe routes, metrics) runs without them. CI also
runs the server in a real ``.[serve]``-only environment (tests/test_serve_only_env.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

import resnet
from tests.serve_support import REPO, Server, export_onnx, probs_from_answer, reference_probs

BLOCKED = ("torch", "torchvision")


def tiny_checkpoint(folder: Path) -> Path:
    """A small real checkpoint (ResNet-8, seeded random weights, 10 labels): seconds to make, even on a busy CPU."""
    import torch

    torch.manual_seed(0)
    model = resnet.create_model("cifar_resnet8", num_classes=10)
    card = resnet.make_card("cifar_resnet8", name="tiny-resnet8", labels=[str(i) for i in range(10)])
    path = folder / "tiny.pt"
    resnet.save_checkpoint(path, model.eval(), card)
    return path


def make_tiny_model(folder: Path) -> tuple[Path, Path]:
    """(checkpoint, its ONNX export) in ``folder``."""
    ckpt = tiny_checkpoint(folder)
    return ckpt, export_onnx(ckpt, folder / "tiny.onnx")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment variables for a subprocess in which ``import torch`` and ``import torchvision`` fail."""
    block = tmp_path_factory.mktemp("no_torch")
    for name in BLOCKED:
        (block / name).mkdir()
        (block / name / "__init__.py").write_text(
            f'raise ImportError("No module named {name!r} (blocked: torch-free serving test)", name={name!r})\n'
        )
    path = os.pathsep.join([str(block), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path.rstrip(os.pathsep)}


def test_the_blocker_really_blocks_torch(no_torch_env: dict[str, str]) -> None:
    """Without this the other tests would prove nothing."""
    env = {**os.environ, **no_torch_env}
    probe = "try:\n    import torch\nexcept ImportError as e:\n    print(type(e).__name__, e.name, e)"
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ImportError torch ") and "blocked: torch-free serving test" in proc.stdout


@pytest.mark.slow
def test_onnx_is_served_correctly_without_torch(
    tiny_model: tuple[Path, Path], photo_paths: list[Path], no_torch_env: dict[str, str], tmp_path: Path
) -> None:
    ckpt, onnx_path = tiny_model
    model, card = resnet.load_checkpoint(ckpt)
    probe = "import sys, serve.__main__, serve.engine.backends; print(sorted(m for m in sys.modules if m.startswith('torch')))"
    proc = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, **no_torch_env}, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]
    server = Server(["--model", str(onnx_path)], env=no_torch_env, log_path=tmp_path / "server.log").start()
    try:
        ready = httpx.get(server.url + "/readyz", timeout=10).json()
        assert ready["backend"] == "onnxruntime:CPUExecutionProvider"
        for path in photo_paths[:3]:
            with open(path, "rb") as f:
                r = httpx.post(
                    server.url + "/classify",
                    params={"topk": 10},
                    files=[("file", (path.name, f))],
                    timeout=60,
                )
            assert r.status_code == 200, r.text
            (result,) = r.json()["results"]
            got = probs_from_answer(result, card.num_classes)
            assert np.abs(got - reference_probs(path, model, card)).max() <= 1e-4, path.name
    finally:
        assert server.stop() == 0
    assert "blocked" not in server.log()


def test_checkpoint_without_torch_exits_4_with_one_line(
    tiny_model: tuple[Path, Path], no_torch_env: dict[str, str]
) -> None:
    env = {**os.environ, **no_torch_env}
    proc = subprocess.run(
        [sys.executable, "-m", "serve", "--model", str(tiny_model[0]), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 4, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert 'pip install "resnet-stack[train]"' in lines[0] and "python -m export.onnx" in lines[0]
