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


def _int8_graph(graph: Path, out: Path, target: str) -> Path:
    """A copy of ``graph`` whose card says INT8 quantized for ``target`` (what the providers are offered reads)."""
    import onnx

    from resnet.onnx_card import read_onnx_card, set_onnx_card

    proto = onnx.load(str(graph))
    card = read_onnx_card(graph).replace(precision="int8").with_provenance(calibration={"target": target})
    set_onnx_card(proto, card)
    onnx.save(proto, str(out))
    return out


def test_the_cpu_layout_int8_graph_is_never_offered_to_a_gpu_provider(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """Issue 25 item 2: uint8 activations and int32-bias DequantizeLinear are what TensorRT rejects and the CUDA EP
    cannot run; the gate, ``export.parity --ep`` and the server all refuse to offer it."""
    from export.candidates import open_candidate
    from resnet import UsageError
    from resnet.onnx_card import read_onnx_card
    from resnet.runtime.kinds import not_offered
    from resnet.runtime.ort import ProviderUnavailable
    from serve.engine.backends import load_backend

    cpu = _int8_graph(tiny[1], tmp_path / "model.int8.onnx", "cpu")
    trt = _int8_graph(tiny[1], tmp_path / "model.int8.trt.onnx", "tensorrt")
    card = read_onnx_card(cpu)
    assert not_offered("cpu", card) == "" and "CPU only" in not_offered("tensorrt", card) and not_offered("cuda", card)
    assert not_offered("tensorrt", read_onnx_card(trt)) == "" and not_offered("cuda", read_onnx_card(trt))
    for ep in ("tensorrt", "cuda"):
        with pytest.raises(UsageError, match=f"not run on --ep {ep}: the CPU-layout INT8 graph"):
            open_candidate(cpu, "onnx", card, ep=ep)
        with pytest.raises(ProviderUnavailable, match=f"not offered to {ep}: the CPU-layout INT8 graph"):
            load_backend(cpu, ep)


def test_the_tensorrt_layout_int8_graph_is_a_candidate_with_backend_tensorrt(tiny: tuple[Path, Path]) -> None:
    """Issue 25 item 7: ``--backend tensorrt`` may serve ``model.int8.trt.onnx``; auto still leaves it out."""
    from serve.engine.precision import find_candidates

    folder = tiny[1].parent
    trt = _int8_graph(tiny[1], folder / "tiny.int8.trt.onnx", "tensorrt")
    try:
        auto = {c.path.name: c.excluded for c in find_candidates(folder)}
        ours = {c.path.name: c.excluded for c in find_candidates(folder, "tensorrt")}
    finally:
        trt.unlink()
    assert "TensorRT-ready" in auto["tiny.int8.trt.onnx"]
    assert "TensorRT-ready" not in ours["tiny.int8.trt.onnx"]


def test_fp32_on_a_gpu_provider_is_fp32_or_named_tf32() -> None:
    """Issue 25 item 5: the CUDA EP is told use_tf32=0; the TensorRT EP (kTF32 on, no option) says TF32 in the
    report's candidate info (``OnnxRunner.info["tf32"]``)."""
    from resnet.runtime.ort import cuda_provider_options, provider_list, tf32

    assert cuda_provider_options()["use_tf32"] == "0"
    assert dict(provider_list("tensorrt", None)[1][1])["use_tf32"] == "0"  # the CUDA EP behind the TensorRT EP too
    assert tf32("cuda").startswith("off") and tf32("tensorrt").startswith("on in TensorRT")


def test_the_cpu_gate_report_records_tf32(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from resnet.runtime.runner import OnnxRunner

    runner = OnnxRunner(tiny[1])
    assert runner.info["tf32"] == "n/a (CPU)"


def test_tensorrt_ep_caches_are_keyed_by_ort_tensorrt_gpu_and_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25 item 6: ORT's TensorRT EP docs require new caches when ORT, TensorRT or the GPU change."""
    import onnxruntime as ort

    from resnet.runtime import trt_ep as runtime_ort
    from resnet.runtime.ort import TrtOptions

    monkeypatch.setattr(runtime_ort, "gpu_name", lambda: "NVIDIA H200")
    small = TrtOptions(tmp_path, "input", (3, 32, 32), (1, 10, 64), fp16=True).provider_options()
    big = TrtOptions(tmp_path, "input", (3, 32, 32), (1, 10, 128), fp16=True).provider_options()
    path = Path(small["trt_engine_cache_path"])
    assert path.parent == tmp_path and small["trt_timing_cache_path"] == str(path)
    assert f"ort{ort.__version__}" in path.name and "_trt" in path.name and "NVIDIA_H200" in path.name
    assert "64x3x32x32" in path.name and big["trt_engine_cache_path"] != str(path)
    monkeypatch.setattr(runtime_ort, "gpu_name", lambda: "NVIDIA A100")
    other_gpu = TrtOptions(tmp_path, "input", (3, 32, 32), (1, 10, 64), fp16=True).provider_options()
    assert other_gpu["trt_engine_cache_path"] != str(path)


def test_an_unwritable_model_folder_caches_tensorrt_engines_in_the_user_cache(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25 item 6: where ``<model>.trt_cache`` cannot be made (here a file is in its way, which stops root as
    well as a read-only volume does), the cache goes to the user's cache folder, and the log says where."""
    import shutil

    from resnet.runtime.ort import trt_cache_dir

    model = tmp_path / "model.onnx"
    shutil.copy(tiny[1], model)
    (tmp_path / "model.onnx.trt_cache").write_text("in the way")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    got = trt_cache_dir(model, "")
    assert got is not None and got.is_relative_to(tmp_path / "cache" / "resnet-stack" / "trt") and got.is_dir()
    assert got.name.startswith("model.onnx-")


def test_tensorrt_ep_placement_is_read_from_its_log_and_a_partial_one_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 25 item 7: the EP says at INFO how it placed the graph (tensorrt_execution_provider.cc); a partial
    placement (nodes left to the CUDA EP) is reported, not swallowed."""
    from resnet.runtime.trt_ep import NONE, PARTITIONED, WHOLE, placement

    assert placement([f"{WHOLE} execution provider"]) == "whole"
    assert placement(["other"]) == "unknown"
    with caplog.at_level("WARNING", logger="resnet.runtime"):
        said = placement([f"{PARTITIONED} execution provider is 3"])
        assert placement([f"{NONE} execution provider"]).startswith("none")
    assert said == "partial: 3 subgraphs on TensorRT, the rest on the CUDA EP"
    assert "partial: 3 subgraphs" in caplog.text


def test_a_tensorrt_ep_build_logs_progress_until_the_session_is_made(caplog: pytest.LogCaptureFixture) -> None:
    import time

    from resnet.runtime.trt_ep import build_progress

    with caplog.at_level("INFO", logger="resnet.runtime"), build_progress(Path("model.onnx"), None, every=0.05):
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("TensorRT EP: building or loading engines for model.onnx")
    assert any("still building engines for model.onnx" in line for line in lines)
    assert lines[-1].startswith("TensorRT EP: session for model.onnx ready after")


def test_a_gpu_runner_makes_its_views_session_with_the_view_profile(
    tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25 item 3: the gate (``open_candidate``: no dims given) used to reuse the S x S TensorRT session for
    multi-scale views. Each session is now made once with its own profile, as the server makes them, so the gate
    runs exactly the sessions that serve. ONNX Runtime's sessions are real CPU sessions here; what is recorded is
    the TensorRT options each would have been made with on a GPU."""
    from resnet.multiscale import view_profile
    from resnet.onnx_card import read_onnx_card
    from resnet.runtime import runner as runner_module
    from resnet.runtime.ort import TrtOptions, make_session

    made: list[tuple[str, TrtOptions | None]] = []

    def recording(path: Path, ep: str, opts: object, trt: TrtOptions | None) -> object:
        made.append((ep, trt))
        return make_session(path, "cpu", opts, None)

    monkeypatch.setattr(runner_module, "make_session", recording)
    card = read_onnx_card(tiny[1])
    trt = TrtOptions(None, "input", (3, card.input_size, card.input_size), (1, 10, 64), fp16=True)
    runner = runner_module.OnnxRunner(tiny[1], card, "tensorrt", 0, trt)  # as export.candidates.open_candidate
    assert [ep for ep, _ in made] == ["tensorrt", "tensorrt"]  # one S x S session, one views session; no third
    (_, square), (_, views) = made
    assert square is not None and square.views is None and square.profile == (1, 10, 64)
    assert views is not None and views.views == view_profile(card)
    assert runner.multi_session is not runner.session and runner.spatial is not None


def test_only_known_gpu_providers_count_as_gpu() -> None:
    """Issue 26: ``Combination.on_gpu`` must not call a CPU-only provider (one this table does not know) a GPU."""
    from resnet.runtime.kinds import Combination

    assert Combination("onnxruntime", "TensorrtExecutionProvider", "fp16").on_gpu
    assert Combination("tensorrt", "TensorRT", "int8").on_gpu and Combination("torch", "torch:cuda", "bf16").on_gpu
    assert not Combination("onnxruntime", "CPUExecutionProvider", "fp32").on_gpu
    assert not Combination("onnxruntime", "OpenVINOExecutionProvider", "fp32").on_gpu
    assert not Combination("torch", "torch:cpu", "fp32").on_gpu
    assert Combination("onnxruntime", "OpenVINOExecutionProvider", "fp32").needs_report  # unknown: gated first


def test_every_artifact_kind_has_an_opener() -> None:
    """Issue 26: adding an artifact kind without its opener fails here (docs/DESIGN.md §2's table)."""
    from resnet.runtime.openers import KINDS, OPENERS

    assert set(OPENERS) == set(KINDS), f"artifact kinds without an opener: {set(KINDS) - set(OPENERS)}"


def test_open_runner_opens_a_graph_as_the_gate_and_the_server_do(tiny: tuple[Path, Path]) -> None:
    from resnet.runtime.openers import open_runner

    runner = open_runner(tiny[1])
    try:
        assert runner.combination.describe() == "onnxruntime on CPUExecutionProvider in fp32"
    finally:
        runner.close()
