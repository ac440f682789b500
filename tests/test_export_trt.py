"""TensorRT engines: built, run through resnet.runtime.tensorrt.TensorRTRunner and gated (GPU + tensorrt only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import resnet
from export import trt, trt_rules
from export.engine import INT8_MODE, choose_mode
from export.gate import PRESETS
from resnet.runtime.tensorrt import TensorRTRunner, tensorrt_available

HAS_ENGINE, REASON = tensorrt_available()
needs_engine = pytest.mark.skipif(not HAS_ENGINE, reason=f"TensorRT engine tests need CUDA + tensorrt: {REASON}")


def test_tensorrt_available_says_why_not() -> None:
    ok, reason = tensorrt_available()
    assert isinstance(ok, bool) and reason
    if not ok:
        assert "CUDA" in reason or "tensorrt" in reason or "TensorRT" in reason


def test_build_mode_follows_the_tensorrt_version() -> None:
    assert choose_mode("11.0.0", strongly_typed=None) is True  # BuilderFlag.FP16 is gone in 11
    assert choose_mode("11.4.1", strongly_typed=False) is True
    assert choose_mode("10.16.1.11", strongly_typed=None) is True  # our pin: the FP16 flag is deprecated since 10.12
    assert choose_mode("10.12.0", strongly_typed=None) is True
    assert choose_mode("10.11.0", strongly_typed=None) is False  # FP32 graph + FP16 flag
    assert choose_mode("10.8.0", strongly_typed=True) is True


@pytest.fixture(scope="module")
def engine_folder(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export_trt")
    shutil.copy(digits_checkpoint, folder / "model.pt")
    assert trt.main([str(folder / "model.pt"), "--max-batch", "32", "--require-engine"]) == 0
    return folder


@pytest.mark.gpu
@needs_engine
def test_engine_and_sidecar_are_written_after_the_gate_passes(engine_folder: Path) -> None:
    assert (engine_folder / "model.plan").exists()
    meta = json.loads((engine_folder / "model.plan.json").read_text())
    _, card = resnet.load_checkpoint(engine_folder / "model.pt")
    assert meta["format"] == "resnet-engine" and meta["version"] == 2
    assert resnet.ModelCard.from_dict(meta["card"]) == card.replace(precision="fp16")
    assert meta["profile"] == {"min": 1, "opt": 10, "max": 32}
    assert meta["tensorrt"] and meta["gpu"]["name"]
    assert meta["parity"]["passed"] and meta["parity"]["candidate"]["backend"] == "tensorrt"
    assert (engine_folder / "model.timing.cache").stat().st_size > 0


@pytest.mark.gpu
@needs_engine
def test_runner_handles_dynamic_batches_like_onnxruntime(engine_folder: Path) -> None:
    runner = TensorRTRunner(engine_folder / "model.plan")
    assert (runner.min_batch, runner.max_batch, runner.input_shape) == (1, 32, (3, 32, 32))
    assert runner.spatial is None and len(runner.profiles) == 1  # no --multiscale: one profile, as before
    sess = ort.InferenceSession(str(engine_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    ref = sess.run(None, {"input": x})[0]
    for n in (1, 7, 20, 32):
        out = runner.run(x[:n])
        assert out.shape == (n, 10) and out.dtype == np.float32
        np.testing.assert_allclose(out, ref[:n], atol=5e-2, rtol=0)
    with pytest.raises(ValueError, match="outside the engine's profile"):
        runner.run(np.zeros((33, 3, 32, 32), np.float32))
    runner.close()


@pytest.mark.gpu
@needs_engine
def test_rebuild_reuses_the_timing_cache(engine_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert trt.main([str(engine_folder / "model.pt"), "--max-batch", "32", "--require-engine"]) == 0
    assert "timing cache reused" in capsys.readouterr().out


@pytest.fixture(scope="module")
def multiscale_folder(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export_trt_multiscale")
    shutil.copy(digits_checkpoint, folder / "model.pt")
    assert trt.main([str(folder / "model.pt"), "--max-batch", "32", "--require-engine", "--multiscale"]) == 0
    return folder


@pytest.mark.gpu
@needs_engine
def test_multiscale_engine_has_a_view_profile_recorded_in_its_sidecar(multiscale_folder: Path) -> None:
    meta = json.loads((multiscale_folder / "model.plan.json").read_text())
    assert meta["profile"] == {"min": 1, "opt": 10, "max": 32}
    assert meta["multiscale"] == {"batch": [1, 2, 8], "min_side": 28, "max_side": 72, "sides": [28, 32, 36]}
    assert meta["parity"]["passed"] and meta["parity"]["multiscale"]["checked"]


@pytest.mark.gpu
@needs_engine
def test_multiscale_runner_runs_views_on_their_own_profile(multiscale_folder: Path) -> None:
    runner = TensorRTRunner(multiscale_folder / "model.plan")
    assert (runner.min_batch, runner.max_batch, runner.input_shape) == (1, 32, (3, 32, 32))
    assert runner.spatial == (28, 72) and len(runner.profiles) == 2
    sess = ort.InferenceSession(str(multiscale_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in ((10, 3, 32, 32), (2, 3, 32, 43), (2, 3, 72, 36), (8, 3, 28, 72), (1, 3, 36, 48)):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(runner.run(x), sess.run(None, {"input": x})[0], atol=5e-2, rtol=0)
    with pytest.raises(ValueError, match="outside the engine's profile"):
        runner.run(np.zeros((2, 3, 80, 80), np.float32))
    runner.close()


@pytest.fixture(scope="module")
def int8_folder(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export_trt_int8")
    shutil.copy(digits_checkpoint, folder / "model.pt")
    argv = [str(folder / "model.pt"), "--int8", "--calib", "digits", "--calib-count", "50", "--max-batch", "32"]
    assert trt.main([*argv, "--require-engine"]) == 0
    return folder


@pytest.mark.gpu
@needs_engine
def test_int8_engine_is_built_from_the_tensorrt_ready_graph_and_gated(int8_folder: Path) -> None:
    graph = int8_folder / "model.int8.trt.onnx"
    assert trt_rules.check_graph(onnx.load(str(graph))) == []
    meta = json.loads((int8_folder / "model.int8.plan.json").read_text())
    assert meta["precision"] == "int8" and meta["card"]["precision"] == "int8"
    assert meta["build"]["source_onnx"] == graph.name and meta["build"]["mode"] == INT8_MODE
    assert meta["parity"]["passed"] and meta["parity"]["candidate"]["backend"] == "tensorrt"
    assert meta["parity"]["thresholds"] == PRESETS["int8"].as_dict()


@pytest.mark.gpu
@needs_engine
def test_int8_engine_agrees_with_its_graph_in_onnxruntime(int8_folder: Path) -> None:
    runner = TensorRTRunner(int8_folder / "model.int8.plan")
    sess = ort.InferenceSession(str(int8_folder / "model.int8.trt.onnx"), providers=["CPUExecutionProvider"])
    _, card = resnet.load_checkpoint(int8_folder / "model.pt")
    from PIL import Image

    from resnet.samples import digits_images

    images, _ = digits_images("test")
    x = np.concatenate([resnet.preprocess(Image.fromarray(img), card, crops="center") for img in images[:96]])
    got, ref = runner.run(x[:32]), sess.run(None, {"input": x[:32]})[0]
    for i in range(32, 96, 32):
        got = np.concatenate([got, runner.run(x[i : i + 32])])
        ref = np.concatenate([ref, sess.run(None, {"input": x[i : i + 32]})[0]])
    runner.close()
    assert got.shape == ref.shape and np.isfinite(got).all()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.97  # same Q/DQ scales; kernels and fusions differ
