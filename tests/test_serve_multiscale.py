"""``/classify?crops=multiscale`` (the paper's multi-scale test) on the real server and the real ONNX Runtime
sessions: the answer equals ``resnet.multiscale`` views through the torch model, views of one shape share batches,
the cost is bounded before decoding, and a model that takes only S x S says how to re-export."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnet
from resnet.multiscale import ANY_SIZE, multiscale_probabilities, multiscale_views, view_pixels
from resnet.samples import digits_images
from serve.engine.backends import load_backend
from tests.serve_support import REPO, Server, classify, encode, export_onnx, probs_from_answer

NUM_CLASSES = 10
SIDES = [28, 32, 36]  # the digits model is CIFAR-family, 32 px


@pytest.fixture(scope="module")
def model_and_card(digits_checkpoint: Path):
    return resnet.load_checkpoint(digits_checkpoint)


@pytest.fixture(scope="module")
def fixed_onnx(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed-size graph (input [N, 3, 32, 32]): still valid, but takes only the card's S x S."""
    return export_onnx(digits_checkpoint, tmp_path_factory.mktemp("fixed") / "fixed.onnx", any_size=False)


@pytest.fixture(scope="module")
def ms_server(digits_onnx_model: Path) -> Iterator[Server]:
    """The any-size digits graph; batches wait up to 100 ms so one request's views meet in the queue."""
    server = Server(
        ["--model", str(digits_onnx_model), "--max-wait-ms", "100", "--max-multiscale-pixels", "200000"],
        log_path=digits_onnx_model.parent / "ms_server.log",
    ).start()
    yield server
    assert server.stop() == 0, server.log()


def offline(data: bytes, model: torch.nn.Module, card) -> np.ndarray:
    """The reference: resnet.multiscale views of the bytes through the torch model, mean softmax."""
    with torch.no_grad():
        logits = [model(torch.from_numpy(v)).numpy() for v in multiscale_views(data, card)]
    return multiscale_probabilities(logits)[0]


def digit_png(index: int, size: tuple[int, int]) -> bytes:
    x, _ = digits_images("test")
    return encode(Image.fromarray(x[index]).resize(size, Image.Resampling.BILINEAR), "PNG")


def test_multiscale_answer_matches_offline_reference(ms_server, model_and_card, photo_paths):
    model, card = model_and_card
    files = [(p.name, p.read_bytes()) for p in photo_paths[:3]] + [("digit.png", digit_png(0, (40, 30)))]
    r = classify(ms_server, files, crops="multiscale")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["crops"] == "multiscale" and body["sides"] == SIDES
    for (name, data), result in zip(files, body["results"]):
        got = probs_from_answer(result, NUM_CLASSES)
        assert np.abs(got - offline(data, model, card)).max() <= 1e-4, name
    ten = classify(ms_server, files[-1:]).json()  # ten-crop still answers, without sides
    assert ten["crops"] == "ten" and ten["sides"] is None and ten["batch_sizes"] == [10]


def test_same_size_images_share_batches_one_shape_each(ms_server):
    before = ms_server.metric("resnet_serve_batch_size_count")
    files = [("a.png", digit_png(1, (44, 33))), ("b.png", digit_png(2, (44, 33)))]
    r = classify(ms_server, files, crops="multiscale")
    assert r.status_code == 200, r.text
    # 3 sides, each a batch of both images' view + mirror: 4 rows, never padded, never mixed with another side
    assert r.json()["batch_sizes"] == [4]
    assert ms_server.metric("resnet_serve_batch_size_count") - before == 3


def test_over_the_view_budget_is_413_before_decoding(ms_server):
    noise = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    truncated = encode(Image.fromarray(noise), "PNG")[:200]  # the header says 400x300; the pixels are cut off
    cost = view_pixels(400, 300, SIDES)
    n = 200000 // cost + 1  # just over --max-multiscale-pixels
    r = classify(ms_server, [(f"{i}.png", truncated) for i in range(n)], crops="multiscale")
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
    assert "200000" in r.json()["error"]["message"]
    one = classify(ms_server, [("0.png", truncated)], crops="multiscale")  # under the budget: decoded, and bad
    assert one.status_code == 400 and one.json()["error"]["code"] == "bad_image"


def test_fixed_size_graph_is_422_with_the_reexport_command(fixed_onnx):
    server = Server(["--model", str(fixed_onnx)], log_path=fixed_onnx.parent / "server.log").start()
    try:
        r = classify(server, [("d.png", digit_png(3, (32, 32)))], crops="multiscale")
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "multiscale_unavailable"
        assert "python -m export.onnx" in err["message"] and "export.trt" in err["message"]
        assert classify(server, [("d.png", digit_png(3, (32, 32)))]).status_code == 200  # ten-crop unaffected
    finally:
        server.stop()


def test_multiscale_off_is_422(digits_onnx_model):
    server = Server(["--model", str(digits_onnx_model), "--multiscale", "off"]).start()
    try:
        r = classify(server, [("d.png", digit_png(4, (32, 32)))], crops="multiscale")
        assert r.status_code == 422 and r.json()["error"]["code"] == "multiscale_unavailable", r.text
        assert "--multiscale off" in r.json()["error"]["message"]
    finally:
        server.stop()


def test_multiscale_on_refuses_a_fixed_size_graph_at_start(fixed_onnx):
    proc = subprocess.run(
        [sys.executable, "-m", "serve", "--model", str(fixed_onnx), "--multiscale", "on", "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "python -m export.onnx" in proc.stderr


def test_backend_sessions_by_input_size(digits_onnx_model, fixed_onnx):
    both = load_backend(digits_onnx_model, "onnxruntime")
    assert both.spatial == ANY_SIZE and both.multi_session is not None
    assert both.session.get_inputs()[0].shape[2:] == [32, 32]  # pinned: the fixed-size speed for S x S crops
    assert both.multi_session.get_inputs()[0].shape[2:] == ["height", "width"]
    view = np.random.default_rng(1).standard_normal((2, 3, 28, 37), dtype=np.float32)
    assert both.run(view).shape == (2, NUM_CLASSES)
    assert both.run(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, NUM_CLASSES)
    off = load_backend(digits_onnx_model, "onnxruntime", multiscale="off")
    assert off.spatial is None and off.multi_session is None
    assert load_backend(fixed_onnx, "onnxruntime").spatial is None
