"""Feeding a runner's device (resnet.runtime.device_feed): resized uint8 images in, crops cut and normalised on the
device, the next batch staged while the last one runs. On CPU tensors here (the GPU's code path); on CUDA as well
when present."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import resnet
from resnet.runtime.crops import crop_protocol
from resnet.runtime.device_feed import DeviceFeed, ImageBatch, ImageRows, attach_feed, feeds_gpu
from serve.engine.batcher import Batcher
from tests.test_device_preprocess import CIFAR, IMAGENET, resized

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_a_full_batch_is_staged_while_the_last_one_runs() -> None:
    """Batch 2 is full when batch 1 starts: it is staged (its copy queued) before batch 1's run returns."""
    staged_second = threading.Event()
    order: list[str] = []

    def stage(batch: np.ndarray) -> np.ndarray:
        order.append(f"stage {int(batch[0, 0, 0, 0])}")
        if len(order) > 1:
            staged_second.set()
        return batch

    def run(batch: np.ndarray) -> np.ndarray:
        first = not order.count("run 1")
        order.append(f"run {int(batch[0, 0, 0, 0])}")
        if first:  # the backend is busy with batch 1 until batch 2 has been staged (or 10 s pass)
            order.append(f"overlapped {staged_second.wait(10)}")
        return np.zeros((len(batch), 3), np.float32)

    async def go() -> None:
        batcher = Batcher(run, 10, 0.001, 100, [10], input_size=4, stage=stage)
        batcher.start()
        items = [np.full((10, 3, 4, 4), i, np.float32) for i in (1, 2)]
        await asyncio.gather(*(batcher.submit(a) for a in items))
        await batcher.close()

    asyncio.run(go())
    # batch 2's staging does not wait for batch 1's run to return (it may even come before batch 1's run starts)
    assert order[0] == "stage 1" and order[-1] == "run 2" and "overlapped True" in order
    assert order.index("stage 2") < order.index("overlapped True") < order.index("run 2")


def test_a_partial_batch_waits_for_the_backend_and_grows() -> None:
    """Items that arrive while a batch runs and do not fill one are not staged early: they wait for the backend and
    run together, as they would without staging."""
    sizes: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.3)
        sizes.append(int((batch[:, 0, 0, 0] > 0).sum()))
        return np.zeros((len(batch), 3), np.float32)

    async def go() -> None:
        batcher = Batcher(run, 40, 0.001, 400, [10, 20, 40], input_size=4, stage=lambda b: b)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(np.ones((40, 3, 4, 4), np.float32)))
        await asyncio.sleep(0.1)  # batch 1 is running
        later = [batcher.submit(np.ones((10, 3, 4, 4), np.float32)) for _ in range(2)]
        await asyncio.gather(first, *later)
        await batcher.close()

    asyncio.run(go())
    assert sizes == [40, 20]


@pytest.mark.parametrize("device", DEVICES)
def test_image_batch_rows_and_padding_equal_the_cpu_path(photo_paths: list[Path], device: str) -> None:
    """An ``ImageBatch`` whose first image is split (its last 4 crops), then a whole image, then 6 padding rows:
    the feed's normalised rows are ``resnet.preprocess``'s rows, and the padding is zero pixels normalised."""
    feed = DeviceFeed(IMAGENET, device)
    ten = crop_protocol("ten")
    a, b = (ImageRows(resized(p, IMAGENET), ten, 224) for p in photo_paths[:2])
    assert len(a) == 10 and a.shape == (10, 3, 224, 224)
    x = feed.ready(feed.stage(ImageBatch([(a, 6, 10), (b, 0, 10)], 20))).float().cpu().numpy()
    want = [resnet.preprocess(p.read_bytes(), IMAGENET, "ten", draft=False) for p in photo_paths[:2]]
    assert x.shape == (20, 3, 224, 224)
    assert np.abs(x[:4] - want[0][6:]).max() <= 1e-6 and np.abs(x[4:14] - want[1]).max() <= 1e-6
    zero = feed.pre.normalise(torch.zeros((1, 3, 224, 224), dtype=torch.uint8, device=device)).cpu().numpy()
    assert np.array_equal(x[14:], np.repeat(zero, 6, axis=0))


def test_attach_feed_modes_say_where_preprocessing_runs(digits_checkpoint: Path) -> None:
    from resnet.runtime.torch_runner import TorchRunner

    runner = TorchRunner.from_checkpoint(digits_checkpoint)
    assert "host" in attach_feed(runner, "off") and not runner.device_side
    why = attach_feed(runner, "auto")
    if not torch.cuda.is_available():
        assert why == "preprocessing on the host (the model does not run on a GPU)" and runner.feed is None
    assert "on cpu" in attach_feed(runner, "on") or torch.cuda.is_available()
    assert runner.device_side and feeds_gpu(runner) == torch.cuda.is_available()


@pytest.mark.parametrize("crops", ["ten", "center"])
def test_fed_runners_answer_as_the_host_path(
    digits_checkpoint: Path, digits_onnx_model: Path, photo_paths: list[Path], crops: str
) -> None:
    """A checkpoint on torch and a graph on ONNX Runtime (reading the staged tensor in place by I/O binding), fed:
    the logits of resized uint8 images equal the host path's float32 crops."""
    from resnet.runtime.openers import open_runner

    _, card = resnet.load_checkpoint(digits_checkpoint)
    protocol = crop_protocol(crops)
    rows = [ImageRows(resized(p, card), protocol, card.input_size) for p in photo_paths[:3]]
    host = np.concatenate([resnet.preprocess(p.read_bytes(), card, crops, draft=False) for p in photo_paths[:3]])
    batch = ImageBatch([(r, 0, len(r)) for r in rows], len(host))
    for artifact in (digits_checkpoint, digits_onnx_model):
        runner = open_runner(artifact)
        want = runner.run(host)
        attach_feed(runner, "on")
        assert np.abs(runner.run_staged(runner.stage(batch)) - want).max() <= 1e-4, artifact.name
        assert np.abs(runner.run(host) - want).max() <= 1e-4  # float32 crops go through the feed too
        runner.close()


def test_cifar_padding_input_size_is_the_cards(photo_paths: list[Path]) -> None:
    """A card whose crops are not 224 (CIFAR's 32 from 36): ``ImageRows.shape`` and the cut rows follow it."""
    rows = ImageRows(resized(photo_paths[0], CIFAR), crop_protocol("center"), CIFAR.input_size)
    x = DeviceFeed(CIFAR, "cpu").stage(ImageBatch([(rows, 0, 1)], 2)).x
    assert rows.shape == (1, 3, 32, 32) and tuple(x.shape) == (2, 3, 32, 32)


def test_server_fed_on_the_cpu_answers_as_the_host_path(digits_onnx_model: Path, photo_paths: list[Path]) -> None:
    """The real server, ``--device-preprocess on`` against ``off`` on the same graph (ONNX Runtime reading the staged
    tensors by I/O binding): the same probabilities for ten-crop, centre-crop and multi-scale requests of several
    photos and the same logits for KServe v2 FP32 crops, and /readyz says where preprocessing runs."""
    import httpx

    from tests.serve_support import Server, classify

    files = [p.read_bytes() for p in photo_paths[:3]]
    answers = {}
    for mode in ("on", "off"):
        log = digits_onnx_model.parent / f"server-{mode}.log"
        server = Server(["--model", str(digits_onnx_model), "--device-preprocess", mode], log_path=log).start()
        try:
            ready = httpx.get(server.url + "/readyz", timeout=10).json()
            assert ready["preprocess"] == ("cpu" if mode == "on" else "host"), ready
            checked = ready["preprocess_check"]  # the feed against the host path, at load (resnet.runtime.feed_check)
            assert checked.startswith("device crops within 0 of") if mode == "on" else checked is None, ready
            got = []
            for crops in ("ten", "center", "multiscale"):  # multi-scale views go through the feed as float32
                r = classify(server, files, crops=crops)
                assert r.status_code == 200, r.text
                got.append(r.json()["results"])
            crops = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
            tensor = {"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": crops.ravel().tolist()}
            v2 = httpx.post(server.url + "/v2/models/digits-resnet8/infer", json={"inputs": [tensor]}, timeout=30)
            assert v2.status_code == 200, v2.text
            got.append(v2.json()["outputs"])
            answers[mode] = got
        finally:
            assert server.stop() == 0, server.log()
    on_v2, off_v2 = answers["on"].pop(), answers["off"].pop()  # KServe v2 FP32 crops: the logits agree
    assert np.allclose(on_v2[0]["data"], off_v2[0]["data"], atol=1e-4)
    for on, off in zip(answers["on"], answers["off"]):
        for a, b in zip(on, off):
            assert [x["index"] for x in a["topk"]] == [x["index"] for x in b["topk"]]
            assert np.allclose([x["probability"] for x in a["topk"]], [x["probability"] for x in b["topk"]], atol=1e-5)


def test_a_gpu_runner_beside_a_torch_without_cuda_keeps_the_host_path(digits_checkpoint: Path) -> None:
    """ONNX Runtime's CUDA build next to a CPU-only torch: ``auto`` serves from the host and says why, ``on``
    refuses with one line. Here the runner's side of it (its device and card) is all that is needed."""
    from resnet import MissingComponentError

    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    _, card = resnet.load_checkpoint(digits_checkpoint)

    class OnTheGpu:  # what attach_feed asks of a runner whose provider runs on GPU 0
        feed = None

        def __init__(self) -> None:
            self.card = card

        def feed_device(self) -> str:
            return "cuda:0"

        def feed_dtype(self) -> None:
            return None

        def use_feed(self, feed: DeviceFeed) -> None:
            self.feed = feed

    runner = OnTheGpu()
    why = attach_feed(runner, "auto")
    assert why.startswith("preprocessing on the host (the model runs on cuda:0, but this PyTorch") and not runner.feed
    with pytest.raises(MissingComponentError, match="--device-preprocess on: the model runs on cuda:0"):
        attach_feed(runner, "on")
