"""resnet.runtime on the CPU: which parity report admits which served combination, the GPU session options
(no CPU fallback, INT8 on the TensorRT EP, cuDNN algorithm search), and the refusals a CPU machine can show."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import httpx
import pytest

import resnet
from export import parity
from resnet.artifacts import report_path
from resnet.runtime.kinds import Combination, ep_combinations
from resnet.runtime.ort import (
    DISABLE_CPU_FALLBACK,
    ProviderUnavailable,
    TrtOptions,
    gpu_session_options,
    make_session,
    preload_tensorrt,
    provider_list,
    session_options,
)
from resnet.runtime.report import ParityReport, ReportError, admitting_report, combination_report_path
from serve.engine.backends import load_backend
from tests.serve_support import Server
from tests.test_torch_free_serve import make_tiny_model

CPU = Combination("onnxruntime", "CPUExecutionProvider", "fp32")
TRT_FP16 = Combination("onnxruntime", "TensorrtExecutionProvider", "fp16")
TRT_FP32 = Combination("onnxruntime", "TensorrtExecutionProvider", "fp32")
ENGINE_FP16 = Combination("tensorrt", "TensorRT", "fp16")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, ONNX graph) with the graph's real CPU parity report beside it."""
    folder = tmp_path_factory.mktemp("gated")
    ckpt, graph = make_tiny_model(folder)
    assert parity.main([str(ckpt), str(graph), "--limit", "2"]) == 0
    return ckpt, graph


def _copy(graph: Path, folder: Path, name: str = "model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / name
    shutil.copy(graph, out)
    return out


def _write_report(path: Path, combination: Combination | None, passed: bool = True, **candidate: str) -> Path:
    """A report as the gate writes it (version 2 with ``combination``; version 1 without: its candidate info)."""
    doc = {"format": "resnet-parity", "version": 1, "passed": passed, "failures": [] if passed else ["top-1 90%"]}
    doc["candidate"] = {"backend": "onnxruntime-cpu", "precision": "fp32", **candidate}
    if combination is not None:
        doc = {**doc, "version": 2, **combination.as_dict()}
    path.write_text(json.dumps(doc))
    return path


def test_the_gate_records_what_it_ran_and_the_cpu_serves_with_that_report(gated: tuple[Path, Path]) -> None:
    _, graph = gated
    report = ParityReport.read(report_path(graph))
    assert report.passed and report.combination == CPU
    backend = load_backend(graph, "onnxruntime")
    assert backend.combination == CPU and backend.report == str(report_path(graph))


def test_a_cpu_gate_of_the_fp16_graph_does_not_admit_tensorrt_fp16_on_the_fp32_graph(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    _write_report(report_path(tmp_path / "model.fp16.onnx"), None, precision="fp16")  # passed on the CPU
    report, why = admitting_report(model, TRT_FP16)
    assert report is None and "model.onnx.ort-tensorrt-fp16.parity.json" in why and "--ep tensorrt --trt-fp16" in why


def test_only_a_passing_report_of_exactly_that_combination_admits_it(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    path = combination_report_path(model, TRT_FP16)
    assert path.name == "model.onnx.ort-tensorrt-fp16.parity.json"
    _write_report(path, TRT_FP16)
    report, why = admitting_report(model, TRT_FP16)
    assert report is not None and report.path == path and why == ""
    assert admitting_report(model, TRT_FP32)[0] is None  # FP16 on the TensorRT EP admits nothing else
    _write_report(path, TRT_FP32)  # a report renamed by hand: it ran another combination
    assert "ran onnxruntime on TensorrtExecutionProvider in fp32, not" in admitting_report(model, TRT_FP16)[1]
    _write_report(path, TRT_FP16, passed=False)
    assert "says its gate failed (top-1 90%)" in admitting_report(model, TRT_FP16)[1]
    path.write_text("{not json")
    assert "not readable JSON" in admitting_report(model, TRT_FP16)[1]


def test_cpu_serving_needs_no_report_as_before_and_reads_version_1_reports(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    assert admitting_report(model, CPU) == (None, "")
    _write_report(report_path(model), None)  # written before the runtime was recorded
    report, why = admitting_report(model, CPU)
    assert why == "" and report is not None and report.combination == CPU


def test_an_engine_is_admitted_by_its_own_report_in_its_own_precision(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    assert combination_report_path(plan, ENGINE_FP16) == report_path(plan)
    assert "no parity report model.plan.parity.json" in admitting_report(plan, ENGINE_FP16)[1]
    _write_report(report_path(plan), None, backend="tensorrt", precision="fp16")
    assert admitting_report(plan, ENGINE_FP16)[0] is not None
    int8 = Combination("tensorrt", "TensorRT", "int8")
    assert "not tensorrt on TensorRT in int8" in admitting_report(plan, int8)[1]


def test_a_foreign_file_is_not_a_report(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx.parity.json"
    path.write_text(json.dumps({"passed": True}))
    with pytest.raises(ReportError, match="is not a parity report"):
        ParityReport.read(path)


def test_tensorrt_ep_combinations_fastest_first_and_int8_for_a_qdq_graph() -> None:
    assert ep_combinations("tensorrt", "fp32") == [(TRT_FP16, True), (TRT_FP32, False)]
    int8 = Combination("onnxruntime", "TensorrtExecutionProvider", "int8")
    assert ep_combinations("tensorrt", "int8", "tensorrt") == [(int8, False)]
    assert ep_combinations("tensorrt", "int8") == ep_combinations("cuda", "int8") == []  # the CPU layout: CPU only
    assert ep_combinations("tensorrt", "fp16") == [(TRT_FP16, True)]
    assert ep_combinations("cuda", "fp32") == [(Combination("onnxruntime", "CUDAExecutionProvider", "fp32"), False)]
    opts = TrtOptions(None, "input", (3, 32, 32), (1, 10, 64), fp16=False, int8=True).provider_options()
    assert opts["trt_int8_enable"] == "True" and opts["trt_fp16_enable"] == "False"


def test_gpu_sessions_refuse_cpu_fallback_and_leave_the_cpu_provider_out() -> None:
    opts = gpu_session_options(session_options(1))
    assert opts.get_session_config_entry(DISABLE_CPU_FALLBACK) == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # the CPU session may use the CPU EP
        session_options(1).get_session_config_entry(DISABLE_CPU_FALLBACK)
    cuda = provider_list("cuda", None)
    assert cuda == [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"})]
    assert [p[0] for p in provider_list("tensorrt", None)] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]


def test_a_graph_that_would_run_on_the_cpu_is_refused_not_reported_as_cuda(gated: tuple[Path, Path]) -> None:
    """On this CPU-only onnxruntime every node would fall back to the CPU: session creation fails with ONNX
    Runtime's reason instead of a session that says CUDA and runs on the CPU."""
    _, graph = gated
    with pytest.raises(ProviderUnavailable, match="fallback to CPU EP has been explicitly disabled"):
        make_session(graph, "cuda", session_options(1), None)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: libnvinfer loads")
def test_tensorrt_ep_without_libnvinfer_says_how_to_install_it(gated: tuple[Path, Path]) -> None:
    why = preload_tensorrt()
    assert why is not None and "libnvinfer.so.10" in why and 'pip install "tensorrt-cu13"' in why
    with pytest.raises(ProviderUnavailable, match="needs TensorRT's libnvinfer.so.10"):
        make_session(gated[1], "tensorrt", session_options(1), None)


def test_the_server_refuses_the_tensorrt_ep_without_its_report(gated: tuple[Path, Path], tmp_path: Path) -> None:
    graph = _copy(gated[1], tmp_path)
    with pytest.raises(ProviderUnavailable, match="not admitted: no parity report model.onnx.ort-tensorrt-fp16"):
        load_backend(graph, "tensorrt")


def test_a_gpu_gate_on_a_cpu_machine_exits_4_and_leaves_the_graph(
    gated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, graph = gated
    graph = _copy(graph, tmp_path)
    code = resnet.run_cli(parity.main, [str(ckpt), str(graph), "--limit", "1", "--ep", "cuda"], prog="export.parity")
    assert code == 4 and graph.is_file() and not list(tmp_path.glob("*.rejected"))
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "CUDAExecutionProvider" in errors[0] and "Traceback" not in errors[0]


def test_readyz_names_the_report_the_server_relied_on(gated: tuple[Path, Path], tmp_path: Path) -> None:
    _, graph = gated
    server = Server(["--model", str(graph)], log_path=tmp_path / "server.log").start()
    try:
        ready = httpx.get(server.url + "/readyz", timeout=10).json()
    finally:
        assert server.stop() == 0
    assert ready["status"] == "ready" and ready["report"] == str(report_path(graph))
    assert ready["backend"] == "onnxruntime:CPUExecutionProvider" and ready["precision"] == "fp32"
