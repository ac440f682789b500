"""The crop queue on its own, with a real ONNX Runtime session of the digits model as the backend: images larger
than the engine's max batch are split across batches, batches are padded to warmed-up shapes, results come back to
the right caller, and cancelled callers leave the queue."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from serve.engine.backends import load_backend
from serve.engine.batcher import Batcher, QueueFull
from serve.engine.shapes import batch_shapes
from tests.serve_support import export_onnx


@pytest.fixture(scope="module")
def backend(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_backend(export_onnx(digits_checkpoint, tmp_path_factory.mktemp("batcher") / "m.onnx"), "onnxruntime")


def crops(seed: int, n: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def test_batch_shapes_default_clip_and_engine_minimum():
    assert batch_shapes(64) == [1, 2, 4, 8, 10, 16, 20, 30, 32, 40, 50, 60, 64]
    assert batch_shapes(12) == [1, 2, 4, 8, 10, 12]
    assert batch_shapes(16, [3, 100], min_batch=4) == [4, 16]


def test_images_split_across_small_batches_get_their_own_logits(backend):
    seen: list[tuple[int, int]] = []

    async def go():
        b = Batcher(
            backend.run,
            max_batch=4,
            max_wait_s=0.01,
            max_queue_crops=100,
            shapes=[1, 2, 4],
            on_batch=lambda n, padded, s: seen.append((n, padded)),
        )
        b.start()
        try:
            return await asyncio.gather(*(b.submit(crops(i)) for i in range(3)))
        finally:
            await b.close()

    results = asyncio.run(go())
    for i, st in enumerate(results):
        np.testing.assert_allclose(st.logits, backend.run(crops(i)), rtol=1e-5, atol=1e-5)
    assert sum(n for n, _ in seen) == 30 and all(padded in (1, 2, 4) and padded >= n for n, padded in seen)
    assert max(n for n, _ in seen) == 4  # never over the engine's max batch


def test_crops_of_concurrent_callers_share_a_batch(backend):
    seen: list[int] = []

    async def go():
        b = Batcher(backend.run, 64, 0.05, 1000, batch_shapes(64), on_batch=lambda n, p, s: seen.append(n))
        b.start()
        try:
            return await asyncio.gather(*(b.submit(crops(i)) for i in range(5)))
        finally:
            await b.close()

    results = asyncio.run(go())
    assert seen == [50] and all(st.batch_sizes == [50] for st in results)


def test_cancelled_caller_leaves_the_queue_and_bound_is_enforced(backend):
    async def go():
        b = Batcher(backend.run, 64, 1.5, 15, batch_shapes(64))  # batches wait up to 1.5 s to fill
        b.start()
        try:
            waiting = asyncio.ensure_future(b.submit(crops(0)))
            await asyncio.sleep(0.05)
            assert b.pending_crops == 10
            with pytest.raises(QueueFull):
                await b.submit(crops(1))
            waiting.cancel()
            await asyncio.sleep(0)
            assert b.pending_crops == 0
            st = await asyncio.wait_for(b.submit(crops(2, n=1)), 10)  # the queue works on after a cancel
            return st
        finally:
            await b.close()

    st = asyncio.run(go())
    assert st.logits.shape == (1, 10)


def test_batches_group_by_shape_within_the_pixel_cap_and_count_crop_equivalents():
    """The real Batcher with a numpy backend that records what it got: one shape per batch, S x S padded to a
    warmed shape, other shapes unpadded and within max_batch * S * S pixels, each caller its own rows back."""
    got: list[tuple[int, ...]] = []

    def run(batch: np.ndarray) -> np.ndarray:
        got.append(batch.shape)
        return np.stack([batch.reshape(len(batch), -1).mean(1), np.full(len(batch), batch.shape[2])], axis=1)

    def views(seed: int, h: int, w: int, n: int = 2) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((n, 3, h, w), dtype=np.float32)

    items = [views(0, 28, 36), crops(1, 3), views(2, 28, 36), views(3, 36, 48), views(4, 36, 48), crops(5, 3)]

    async def go():
        b = Batcher(run, 4, 0.05, 100, [2, 4], input_size=32)
        b.start()
        try:
            jobs = [asyncio.ensure_future(b.submit(x)) for x in items]
            await asyncio.sleep(0)
            # 36 x 48 is 1.7 crops of 32 x 32: 2 crop-equivalents per row; 28 x 36 is under one: 1
            assert b.pending_crops == 2 + 3 + 2 + 2 * 2 + 2 * 2 + 3
            return await asyncio.gather(*jobs)
        finally:
            await b.close()

    results = asyncio.run(go())
    for x, st in zip(items, results):
        np.testing.assert_allclose(st.logits[:, 0], x.reshape(len(x), -1).mean(1), rtol=1e-5)
        assert (st.logits[:, 1] == x.shape[2]).all()  # its rows came from a batch of its own shape
    # Oldest item's shape first: both 28x36 items (4 rows, unpadded); 32x32: 3 rows padded to 4 (F does not fit
    # whole); 36x48: 2 rows per batch (the pixel cap 4 * 32 * 32); then F, alone after its wait, padded to 4.
    assert got == [(4, 3, 28, 36), (4, 3, 32, 32), (2, 3, 36, 48), (2, 3, 36, 48), (4, 3, 32, 32)]
    assert results[1].batch_sizes == [3] and results[0].batch_sizes == [4]


def test_view_batches_stay_within_the_backends_view_profile() -> None:
    """A TensorRT view profile takes at most ``max_view_batch`` rows: small views that the pixel cap would let fill
    a whole batch are split to fit it, S x S batches are not limited by it, every caller gets its own rows back."""
    got: list[tuple[int, ...]] = []

    def run(batch: np.ndarray) -> np.ndarray:
        got.append(batch.shape)
        return batch.reshape(len(batch), -1).mean(1, keepdims=True)

    small = [np.full((2, 3, 28, 30), float(i), np.float32) for i in range(4)]  # 8 rows, pixel cap allows 8

    async def go():
        b = Batcher(run, 8, 0.05, 100, [8], input_size=32, max_view_batch=4)
        b.start()
        try:
            return await asyncio.gather(*(b.submit(x) for x in [*small, crops(9, 8)]))
        finally:
            await b.close()

    results = asyncio.run(go())
    assert got == [(4, 3, 28, 30), (4, 3, 28, 30), (8, 3, 32, 32)]
    for i, st in enumerate(results[:4]):
        np.testing.assert_allclose(st.logits[:, 0], float(i))


def test_tensorrt_profile_for_multiscale_views_spans_height_and_width() -> None:
    """The ONNX Runtime TensorRT EP's profile strings (name:NxCxHxW) for the crop and the view sessions, on the CPU:
    the view session gets ``resnet.multiscale.view_profile``, the same profile export.trt --multiscale builds."""
    from resnet.card import make_card
    from resnet.multiscale import view_profile
    from resnet.runtime.ort import TrtOptions

    crops_only = TrtOptions(None, "input", (3, 224, 224), (1, 10, 64), False).provider_options()
    assert crops_only["trt_profile_min_shapes"] == "input:1x3x224x224"
    assert crops_only["trt_profile_opt_shapes"] == "input:10x3x224x224"
    assert crops_only["trt_profile_max_shapes"] == "input:64x3x224x224"
    views = view_profile(make_card("resnet50"))
    opts = TrtOptions(None, "input", (3, 224, 224), (1, 10, 64), False, views=views).provider_options()
    assert opts["trt_profile_min_shapes"] == "input:1x3x224x224"
    assert opts["trt_profile_opt_shapes"] == "input:2x3x384x512"
    assert opts["trt_profile_max_shapes"] == "input:8x3x1280x1280"
    cifar = TrtOptions(None, "input", (3, 32, 32), (1, 10, 64), False, views=view_profile(make_card("cifar_resnet20")))
    assert cifar.provider_options()["trt_profile_max_shapes"] == "input:8x3x72x72"


def _recording_backend(events: list[tuple[str, int]], per_row_s: float = 0.0):
    """A numpy backend that records (warm-up or request, batch rows): warm-up batches are all -1."""

    def run(batch: np.ndarray) -> np.ndarray:
        if per_row_s:
            time.sleep(per_row_s * len(batch))
        events.append(("warm" if (batch == -1).all() else "run", len(batch)))
        return batch.reshape(len(batch), -1)[:, :2].copy()

    return run


def _warm_input(n: int) -> np.ndarray:
    return np.full((n, 3, 32, 32), -1.0, np.float32)


def test_cold_shapes_are_not_used_until_warm_then_warm_in_the_background():
    """Only the first shape is warm: a ten-crop image is split into batches of it (each caller's rows come back),
    the queue empties, the worker warms the rest in order, and the next image runs as one batch of 10."""
    events: list[tuple[str, int]] = []

    async def go():
        b = Batcher(
            _recording_backend(events),
            10,
            0.0,
            100,
            [1, 4, 10],
            input_size=32,
            cold_shapes=[1, 10, 4],
            warm_input=_warm_input,
        )
        await b.warm(1)
        assert b.warm_shapes == [1] and b.cold_shapes == [10, 4]
        first = asyncio.ensure_future(b.submit(crops(0)))
        await asyncio.sleep(0)
        b.start()
        try:
            st = await first
            for _ in range(100):
                if not b.cold_shapes:
                    break
                await asyncio.sleep(0.01)
            assert b.warm_shapes == [1, 4, 10] and not b.cold_shapes
            return st, await b.submit(crops(1))
        finally:
            await b.close()

    first, second = asyncio.run(go())
    assert events == [("warm", 1), *[("run", 1)] * 10, ("warm", 10), ("warm", 4), ("run", 10)]
    np.testing.assert_array_equal(first.logits, crops(0).reshape(10, -1)[:, :2])
    assert first.batch_sizes == [1] * 10 and second.batch_sizes == [10]


def test_a_request_during_background_warm_up_waits_for_that_warm_up_only():
    """Warm-ups take time (per row); a request that arrives while shape 8 warms runs right after it, before the
    worker warms the next cold shape (64), on the largest warm shape."""
    events: list[tuple[str, int]] = []

    async def go():
        b = Batcher(
            _recording_backend(events, per_row_s=0.005),
            64,
            0.0,
            1000,
            [1, 8, 64],
            input_size=32,
            cold_shapes=[1, 8, 64],
            warm_input=_warm_input,
        )
        await b.warm(1)
        b.start()
        try:
            await asyncio.sleep(0.01)  # the worker is warming shape 8 now
            st = await b.submit(crops(0))
            while b.cold_shapes:
                await asyncio.sleep(0.01)
            return st
        finally:
            await b.close()

    st = asyncio.run(go())
    assert events == [("warm", 1), ("warm", 8), ("run", 8), ("run", 8), ("warm", 64)]
    assert st.batch_sizes == [8, 2]
