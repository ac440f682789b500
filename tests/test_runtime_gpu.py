"""ONNX Runtime's TensorRT and CUDA execution providers through resnet.runtime, on a GPU (skipped elsewhere).

Each test gates the digits graph on the GPU provider that will serve it (``export.parity --ep``), then serves it:
the server must pick exactly the combination the report ran, with no node on the CPU (the session would not even
be made), and name that report. Needs onnxruntime-gpu with the provider, a CUDA device and, for the TensorRT EP,
TensorRT's libnvinfer (the tensorrt-cu13 wheel).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export import onnx as export_onnx_cli
from export import parity
from resnet.runtime.kinds import Combination
from resnet.runtime.ort import preload_tensorrt
from resnet.runtime.report import ParityReport, combination_report_path
from serve.engine.backends import load_backend

AVAILABLE = ort.get_available_providers()
HAS_CUDA_EP = "CUDAExecutionProvider" in AVAILABLE
HAS_TRT_EP = "TensorrtExecutionProvider" in AVAILABLE
WHY_NO_TRT = preload_tensorrt() if HAS_TRT_EP else "onnxruntime has no TensorrtExecutionProvider (not onnxruntime-gpu)"

needs_cuda_ep = pytest.mark.skipif(
    not HAS_CUDA_EP, reason=f"needs onnxruntime-gpu with the CUDA EP (this build: {AVAILABLE})"
)
needs_trt_ep = pytest.mark.skipif(WHY_NO_TRT is not None, reason=f"needs the TensorRT EP: {WHY_NO_TRT}")
FAST = ["--limit", "10", "--max-batch", "16"]


@pytest.fixture(scope="module")
def graph(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, its FP32 graph, CPU-gated) in a folder of their own."""
    folder = tmp_path_factory.mktemp("runtime_gpu")
    ckpt = folder / "model.pt"
    shutil.copy(digits_checkpoint, ckpt)
    assert export_onnx_cli.main([str(ckpt)]) == 0
    return ckpt, folder / "model.onnx"


def _served(path: Path, choice: str, combination: Combination) -> None:
    backend = load_backend(path, choice)
    try:
        assert backend.combination == combination
        assert backend.report == str(combination_report_path(path, combination))
        x = np.zeros((10, 3, backend.card.input_size, backend.card.input_size), np.float32)
        assert backend.run(x).shape == (10, backend.card.num_classes)
    finally:
        backend.close()


@needs_cuda_ep
def test_cuda_ep_gated_then_served_with_its_own_report(graph: tuple[Path, Path]) -> None:
    ckpt, onnx_path = graph
    assert parity.main([str(ckpt), str(onnx_path), "--ep", "cuda", *FAST]) == 0
    combination = Combination("onnxruntime", "CUDAExecutionProvider", "fp32")
    report = ParityReport.read(combination_report_path(onnx_path, combination))
    assert report.passed and report.combination == combination
    assert report.data["candidate"]["cudnn_conv_algo_search"] == "HEURISTIC"
    _served(onnx_path, "cuda", combination)


@needs_trt_ep
def test_tensorrt_ep_fp16_gated_then_served_and_fp32_not_without_its_report(graph: tuple[Path, Path]) -> None:
    ckpt, onnx_path = graph
    assert parity.main([str(ckpt), str(onnx_path), "--ep", "tensorrt", "--trt-fp16", *FAST]) == 0
    fp16 = Combination("onnxruntime", "TensorrtExecutionProvider", "fp16")
    assert ParityReport.read(combination_report_path(onnx_path, fp16)).passed
    _served(onnx_path, "tensorrt", fp16)
    _served(onnx_path, "auto", fp16)  # auto: the fastest admitted combination


@needs_trt_ep
def test_tensorrt_ep_runs_an_int8_qdq_graph_with_int8_enabled(graph: tuple[Path, Path]) -> None:
    from export import quantize

    ckpt, onnx_path = graph
    target = ["--target", "tensorrt"]  # only the TensorRT layout goes to TensorRT (issue 25 item 2)
    assert quantize.main([str(ckpt), "--calib", "digits", "--calib-count", "20", *target, *FAST]) == 0
    int8 = onnx_path.with_name("model.int8.trt.onnx")
    assert parity.main([str(ckpt), str(int8), "--ep", "tensorrt", *FAST]) == 0
    combination = Combination("onnxruntime", "TensorrtExecutionProvider", "int8")
    report = ParityReport.read(combination_report_path(int8, combination))
    assert report.data["candidate"]["trt_options"]["trt_int8_enable"] == "True"
    _served(int8, "tensorrt", combination)


@needs_cuda_ep
def test_export_gates_the_graph_on_the_gpu_providers_too(graph: tuple[Path, Path]) -> None:
    _, onnx_path = graph  # the fixture's export.onnx ran gate.gate_gpu_providers after the CPU gate
    cuda = Combination("onnxruntime", "CUDAExecutionProvider", "fp32")
    assert ParityReport.read(combination_report_path(onnx_path, cuda)).passed
