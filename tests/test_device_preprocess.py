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
from resnet.runtime.device_feed import ImageBatch, ImageRows, attach_feed

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
    rows = [ImageRows(img, crop_protocol(crops), card.input_size) for img in images]
    batch = ImageBatch([(r, 0, len(r)) for r in rows], sum(len(r) for r in rows))
    got = pre.normalise(pre.cut(batch)).float().cpu().numpy()
    want = np.concatenate([resnet.preprocess(p.read_bytes(), card, crops, draft=False) for p in photo_paths])
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_host_uint8_crops_normalised_on_the_device_equal_the_cpu_path(photo_paths: list[Path], device: str) -> None:
    pre = DevicePreprocess(IMAGENET, device)
    for path in photo_paths[:3]:
        u8 = pre.crops(torch.from_numpy(resized(path, IMAGENET)), "ten").numpy()  # as the warm-up sends them
        assert u8.dtype == np.uint8 and u8.shape == (TEN_CROPS, 3, 224, 224)
        got = pre.normalise(pre.upload(u8)).cpu().numpy()
        assert np.abs(got - resnet.preprocess(path.read_bytes(), IMAGENET, "ten", draft=False)).max() <= 1e-6


def test_half_precision_output_and_channels_last() -> None:
    pre = DevicePreprocess(IMAGENET, "cpu")
    img = np.random.default_rng(0).integers(0, 256, (256, 300, 3), dtype=np.uint8)
    rows = ImageRows(img, crop_protocol("center"), 224)
    x = pre.normalise(pre.cut(ImageBatch([(rows, 0, 1)], 1)), dtype=torch.bfloat16)
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


def _service(device_side: bool):
    from resnet.runtime.torch_runner import TorchRunner
    from serve.engine.service import ClassifyService
    from serve.settings import Settings

    torch.manual_seed(0)
    backend = TorchRunner(resnet.create_model("cifar_resnet20").eval(), CIFAR)
    attach_feed(backend, "on" if device_side else "off")  # "on": the GPU's code path, on CPU tensors
    return ClassifyService(backend, Settings(decode_threads=1))


def test_server_device_side_path_answers_as_the_cpu_path(photo_paths: list[Path]) -> None:
    """A device-fed runner gets resized uint8 images (cut and normalised in torch, staged on a thread of their
    own); the answers are the CPU path's, ten-crop and centre crop. Only a GPU-fed runner measures its batch."""
    import asyncio

    images = [p.read_bytes() for p in photo_paths[:4]]

    async def classify(device_side: bool):
        service = _service(device_side)
        await service.start()
        try:
            return service, [await service.classify(images, crops, topk=3) for crops in ("ten", "center")]
        finally:
            await service.close()

    gpu, on_device = asyncio.run(classify(True))
    cpu, on_host = asyncio.run(classify(False))
    assert isinstance(gpu.preprocess(images[0], "ten"), ImageRows) and gpu.batcher._stage is not None
    if not torch.cuda.is_available():
        assert gpu.max_batch == cpu.max_batch  # measured on a GPU only
    for device_answer, host_answer in zip(on_device, on_host):
        for a, b in zip(device_answer.results, host_answer.results):
            assert [r["index"] for r in a] == [r["index"] for r in b]
            assert np.allclose([r["probability"] for r in a], [r["probability"] for r in b], atol=1e-6)


def test_measured_max_batch_picks_the_smallest_batch_near_the_best_rate() -> None:
    from serve.engine.shapes import measured_max_batch

    # rows/s: 10 -> 100, 20 -> 190, 40 -> 380, 80 -> 400 (best), 160 -> 405: 40 is within 10% of 405
    per = {10: 0.1, 20: 20 / 190, 40: 40 / 380, 80: 0.2, 160: 160 / 405}
    n, rate = measured_max_batch(per.__getitem__, tuple(per))
    assert n == 40 and round(rate[160]) == 405


def test_torch_runner_takes_uint8_crops_and_device_tensors(photo_paths: list[Path]) -> None:
    """uint8 crops are normalised by the runner itself, and ``run_device`` takes a tensor already on the device:
    both give the logits of the float32 CPU path."""
    from resnet.runtime.torch_runner import TorchRunner

    torch.manual_seed(0)
    backend = TorchRunner(resnet.create_model("cifar_resnet20").eval(), CIFAR)
    u8 = DevicePreprocess(CIFAR).crops(torch.from_numpy(resized(photo_paths[0], CIFAR)), "ten").numpy()
    want = backend.run(resnet.preprocess(photo_paths[0].read_bytes(), CIFAR, "ten", draft=False))
    assert np.abs(backend.run(u8) - want).max() <= 1e-4
    on_device = DevicePreprocess(CIFAR, backend.device).normalise(torch.from_numpy(u8))
    assert np.abs(backend.run_device(on_device) - want).max() <= 1e-4


def test_batcher_never_mixes_uint8_and_float32_rows() -> None:
    """Rows of the same shape but another dtype wait for their own batch (a uint8 row in a float32 batch would be
    read as unnormalised pixels)."""
    import asyncio

    from resnet.runtime.torch_runner import TorchRunner
    from serve.engine.batcher import Batcher

    backend = TorchRunner(resnet.create_model("cifar_resnet20").eval(), CIFAR)
    seen: list[str] = []

    def run(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.dtype.str)
        return backend.run(batch)

    async def go() -> None:
        batcher = Batcher(run, 40, 0.05, 1000, [1, 10, 20, 40], input_size=32)
        batcher.start()
        u8 = np.random.default_rng(0).integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
        f32 = np.zeros((10, 3, 32, 32), np.float32)
        out = await asyncio.gather(*(batcher.submit(a) for a in (u8, f32, u8, f32)))
        await batcher.close()
        assert all(st.logits.shape == (10, 10) for st in out)

    asyncio.run(go())
    assert sorted(seen) == ["<f4", "|u1"]  # two batches of 20 rows, one per dtype


def test_onnx_runtime_reads_device_tensors_by_io_binding(tmp_path: Path) -> None:
    """A real ONNX Runtime session on a bound tensor's memory gives what ``session.run`` gives on the same array."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from resnet.runtime.device_feed import ort_run_device

    node = helper.make_node("ReduceMean", ["input"], ["logits"], axes=[2, 3], keepdims=0)
    graph = helper.make_graph(
        [node],
        "mean",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    u8 = np.random.default_rng(0).integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    x = DevicePreprocess(CIFAR).normalise(torch.from_numpy(u8))  # channels_last: bound after .contiguous()
    want = session.run(None, {"input": x.contiguous().numpy()})[0]
    assert np.array_equal(ort_run_device(session, x), want)
