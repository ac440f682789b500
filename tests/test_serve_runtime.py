"""The serving runtime on this CPU machine: providers that are verified (a GPU provider that does not load is exit 4
with ONNX Runtime's own reason), what runs reported in /readyz, answers and /metrics, the TensorRT EP options, the
onnxruntime/onnxruntime-gpu clash warning, and engines whose sidecar does not fit refused with the rebuild command.

No GPU, TensorRT or onnxruntime-gpu here: what those would do is not faked. Installed distributions that are absent
here (onnxruntime-gpu, tensorrt of another version) are planted as real ``*.dist-info`` metadata folders on the
path, which is exactly what ``importlib.metadata`` reads."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import resnet
from resnet import artifacts
from resnet.runtime.kinds import Combination
from resnet.runtime.ort import TrtOptions, conflicting_runtimes, trt_cache_dir
from resnet.runtime.report import combination_report_path, write_report
from resnet.runtime.trt_ep import engine_cache_key
from serve.engine.backends import trt_profile
from serve.settings import Settings
from tests.engine_support import write_test_sidecar
from tests.serve_support import REPO, Server
from tests.test_torch_free_serve import make_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small real checkpoint and its ONNX export."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def plant_distribution(folder: Path, name: str, version: str) -> Path:
    """A ``<name>-<version>.dist-info`` with its METADATA: an installed distribution as importlib.metadata sees it."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


def run_cli(args: list[str], extra_path: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


# ---- honest providers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cuda", "tensorrt"])
def test_gpu_backend_without_its_parity_report_exits_4_naming_the_report(
    backend: str, tiny_model: tuple[Path, Path], tmp_path: Path
) -> None:
    graph = tmp_path / "tiny.onnx"
    shutil.copy(tiny_model[1], graph)
    proc = run_cli(["-m", "serve", "--model", str(graph), "--backend", backend, "--port", "0"])
    assert proc.returncode == 4, proc.stderr
    line = one_line(proc)
    slug = {"cuda": "ort-cuda-fp32", "tensorrt": "ort-tensorrt-fp16"}[backend]
    assert (
        f"--backend {backend} cannot run tiny.onnx" in line and f"no parity report tiny.onnx.{slug}.parity.json" in line
    )


@pytest.mark.parametrize("backend", ["cuda", "tensorrt"])
def test_gpu_backend_that_would_end_on_the_cpu_exits_4_with_the_reason(
    backend: str, tiny_model: tuple[Path, Path], tmp_path: Path
) -> None:
    """Admitted by a (hand-written) passing report, the session itself is refused on this CPU-only onnxruntime:
    for CUDA by ONNX Runtime (no node may fall back to the CPU), for TensorRT before that (no libnvinfer)."""
    graph = tmp_path / "tiny.onnx"
    shutil.copy(tiny_model[1], graph)
    provider = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[backend]
    combination = Combination("onnxruntime", provider, "fp32")
    report = {"passed": True, "failures": [], "candidate": {"backend": f"onnxruntime-{backend}"}}
    write_report(combination_report_path(graph, combination), report, combination)
    started = time.monotonic()
    proc = run_cli(["-m", "serve", "--model", str(graph), "--backend", backend, "--port", "0"])
    assert proc.returncode == 4, proc.stderr
    line = one_line(proc)
    assert f"--backend {backend} cannot run tiny.onnx" in line
    if backend == "cuda":
        assert "fallback to CPU EP has been explicitly disabled" in line
    elif importlib.util.find_spec("tensorrt") is None:
        assert "needs TensorRT's libnvinfer.so.10" in line and "tensorrt-cu13" in line
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_auto_reports_what_runs_everywhere_and_warns_about_two_onnx_runtimes(
    tiny_model: tuple[Path, Path], photo_paths: list[Path], tmp_path: Path
) -> None:
    planted = plant_distribution(tmp_path / "site", "onnxruntime-gpu", "1.31.1")
    path = os.pathsep.join([str(planted), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    server = Server(["--model", str(tiny_model[1])], env={"PYTHONPATH": path}, log_path=tmp_path / "server.log")
    server.start()
    try:
        assert httpx.get(server.url + "/readyz", timeout=10).json()["backend"] == "onnxruntime:CPUExecutionProvider"
        r = httpx.post(server.url + "/classify", files=[("file", photo_paths[0].read_bytes())], timeout=60)
        assert r.status_code == 200 and r.json()["backend"] == "onnxruntime:CPUExecutionProvider", r.text
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        info = [ln for ln in metrics.splitlines() if ln.startswith("resnet_serve_backend_info{")]
        assert info == [
            'resnet_serve_backend_info{backend="onnxruntime",precision="fp32",provider="CPUExecutionProvider"} 1.0'
        ]
    finally:
        assert server.stop() == 0
    log = (tmp_path / "server.log").read_text()
    assert "both onnxruntime" in log and "onnxruntime-gpu 1.31.1 are installed" in log and "pip uninstall" in log
    # auto says why the faster providers were passed over
    assert "passed over: TensorrtExecutionProvider" in log


def test_conflicting_runtimes_is_silent_with_one_and_explains_two(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    assert conflicting_runtimes() is None  # this environment has onnxruntime only
    monkeypatch.syspath_prepend(str(plant_distribution(tmp_path, "onnxruntime-gpu", "1.31.1")))
    message = conflicting_runtimes()
    assert message is not None and "onnxruntime-gpu 1.31.1" in message and "resnet-stack[serve-gpu]" in message


# ---- TensorRT execution provider options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "profile"),
    [
        ({}, (1, 10, 64)),
        ({"batch_sizes": "1,10,32"}, (1, 10, 64)),  # the server always runs max-batch too
        ({"max_batch": 8}, (1, 8, 8)),
        ({"batch_sizes": "4,20,40", "max_batch": 40}, (4, 20, 40)),
        ({"max_batch": 128}, (1, 10, 128)),
    ],
)
def test_tensorrt_profile_covers_every_batch_shape_the_server_runs(settings: dict, profile: tuple) -> None:
    from serve.engine.shapes import batch_shapes

    s = Settings(model="m.onnx", **settings)
    lo, opt, hi = trt_profile(s)
    assert (lo, opt, hi) == profile
    shapes = batch_shapes(s.max_batch or artifacts.DEFAULT_MAX_BATCH, s.parsed_batch_sizes(), 1)
    assert all(lo <= n <= hi for n in shapes) and opt in shapes


def test_tensorrt_provider_options_use_onnx_runtimes_names(tmp_path: Path) -> None:
    opts = TrtOptions(tmp_path, "input", (3, 224, 224), (1, 10, 64), fp16=True).provider_options()
    keyed = tmp_path / engine_cache_key("1x3x224x224-10x3x224x224-64x3x224x224")  # ORT, TensorRT, GPU, profile
    assert opts == {
        "trt_fp16_enable": "True",
        "trt_int8_enable": "False",
        "trt_profile_min_shapes": "input:1x3x224x224",
        "trt_profile_opt_shapes": "input:10x3x224x224",
        "trt_profile_max_shapes": "input:64x3x224x224",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(keyed),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(keyed),
    }
    no_cache = TrtOptions(None, "input", (3, 32, 32), (1, 1, 1), fp16=False).provider_options()
    assert no_cache["trt_fp16_enable"] == "False" and not any("cache" in k for k in no_cache)


def test_tensorrt_cache_folder_beside_the_model_or_none_when_unwritable(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    assert (
        trt_cache_dir(model, "") == tmp_path / "model.onnx.trt_cache" and (tmp_path / "model.onnx.trt_cache").is_dir()
    )
    assert trt_cache_dir(model, str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert trt_cache_dir(model, str(blocker / "cache")) is None  # cannot be created: engines rebuild, with a warning


def test_backend_choices_include_cuda_and_the_cache_flag() -> None:
    from serve.settings import settings_from

    s = settings_from(["--model", "m.onnx", "--backend", "cuda", "--trt-cache", "/tmp/c"], environ={})
    assert (s.backend, s.trt_cache) == ("cuda", "/tmp/c")


# ---- engines whose sidecar does not fit this machine ------------------------------------------------------------


def _plan(folder: Path, ckpt: Path, **fields: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "tiny.plan"
    plan.write_bytes(b"not a real engine: the sidecar is refused before TensorRT would read it")
    _, card = resnet.load_checkpoint(ckpt)
    write_test_sidecar(plan, card, **fields)
    return plan


def _rewrite_sidecar(plan: Path, **changes: object) -> None:
    side = artifacts.sidecar_path(plan)
    data = json.loads(side.read_text())
    data.update(changes)
    side.write_text(json.dumps(data))


CASES = {
    "other-format": ({"format": "someone-elses-engine"}, "is not a resnet-engine sidecar"),
    "old-version": ({"version": 1}, "is sidecar version 1; this release reads version 2"),
}


@pytest.mark.parametrize("cli", ["serve", "parity"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_foreign_sidecar_is_refused_with_the_rebuild_command(
    cli: str, case: str, tiny_model: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt = tiny_model[0]
    plan = _plan(tmp_path, ckpt)
    changes, expected = CASES[case]
    _rewrite_sidecar(plan, **changes)
    args = ["-m", "serve", "--model", str(plan)] if cli == "serve" else ["-m", "export.parity", str(ckpt), str(plan)]
    proc = run_cli(args)
    assert proc.returncode == 4, proc.stderr
    line = one_line(proc) if cli == "serve" else proc.stderr.strip().splitlines()[-1]
    assert expected in line and "rebuild it here: python -m export.trt" in line and "--require-engine" in line


@pytest.mark.parametrize("cli", ["serve", "parity"])
def test_engine_from_another_tensorrt_version_is_refused(cli: str, tiny_model: tuple[Path, Path], tmp_path: Path):
    ckpt = tiny_model[0]
    plan = _plan(tmp_path / "models", ckpt, tensorrt="10.13.0")
    site = plant_distribution(tmp_path / "site", "tensorrt", "10.16.1.11")  # the TensorRT "installed" here
    args = ["-m", "serve", "--model", str(plan)] if cli == "serve" else ["-m", "export.parity", str(ckpt), str(plan)]
    proc = run_cli(args, extra_path=site, timeout=300)
    assert proc.returncode == 4, proc.stderr
    line = one_line(proc) if cli == "serve" else proc.stderr.strip().splitlines()[-1]
    assert "was built by TensorRT 10.13.0, this machine has 10.16.1.11" in line
    assert "rebuild it here: python -m export.trt" in line


def test_engine_of_the_same_tensorrt_release_is_not_refused_for_its_version(tiny_model: tuple[Path, Path], tmp_path):
    """10.13.0 (as trt.__version__ may say) and 10.13.0.35 (the wheel) are one release: the refusal is for the GPU."""
    plan = _plan(tmp_path / "models", tiny_model[0], tensorrt="10.13.0")
    site = plant_distribution(tmp_path / "site", "tensorrt", "10.13.0.35")
    proc = run_cli(["-m", "serve", "--model", str(plan)], extra_path=site)
    assert proc.returncode == 4, proc.stderr
    line = one_line(proc)
    assert "cannot run a TensorRT engine here" in line and "built by TensorRT" not in line


def test_older_onnx_runtimes_log_is_captured_from_file_descriptor_2() -> None:
    """onnxruntime without ``set_default_logger_callback`` (before 1.32) logs to fd 2: that is what is captured."""
    from resnet.runtime.ort import _stderr_lines

    messages: list[str] = []
    with _stderr_lines(messages):
        os.write(2, b"2026-11-28 [W:onnxruntime:Default] Failed to create TensorrtExecutionProvider\n\n")
    assert messages == ["2026-11-28 [W:onnxruntime:Default] Failed to create TensorrtExecutionProvider"]
    os.write(2, b"")  # fd 2 is back where it was
