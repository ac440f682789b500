"""``--weights NAME`` wherever a network is built from scratch: export.onnx, export.trt, train.evaluate and serve's
``torchvision:ARCH[:WEIGHTS]`` model spec, all through ``resnet.weights.load_model_source``.

No network: a random-init resnet18 state dict sits under the file name torch.hub caches IMAGENET1K_V1 as, in a
temporary ``TORCH_HOME`` (``cached_r18``), so every command needs ``--no-check-hash``. Real exporters, gates,
servers and evaluations run on it; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from PIL import Image

import resnet
import train.evaluate
from export import onnx as export_onnx
from export import trt as export_trt
from resnet.errors import UsageError
from resnet.onnx_card import read_onnx_card
from resnet.samples import sample_photo_paths
from resnet.weights import load_model_source, load_named
from serve.engine.backends import load_backend
from serve.settings import Settings
from tests.serve_support import REPO, Server, probs_from_answer, reference_probs
from tests.weights_support import R18_FILE

NAMED = ["resnet18", "--weights", "IMAGENET1K_V1", "--no-check-hash"]
R18_WEIGHTS = "ResNet18_Weights.IMAGENET1K_V1"


def _run(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m module args`` in ``cwd`` (this checkout first on the path)."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
    )


def _error_lines(stderr: str) -> list[str]:
    """stderr without the server's JSON log lines."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("{")]


def test_export_onnx_builds_the_named_weights_into_a_gated_graph_in_the_current_folder(
    cached_r18: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, state_dict = cached_r18
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert resnet.run_cli(export_onnx.main, [*NAMED, "--limit", "2"]) == 0
    out = work / "resnet18.onnx"  # the default output: ./<arch>.onnx
    card = read_onnx_card(out)
    assert len(card.labels) == 1000 and card.labels[:2] == ("tench", "goldfish")
    assert card.provenance["weights"] == R18_WEIGHTS and card.provenance["sha256_checked"] is False
    report = json.loads((work / "resnet18.onnx.parity.json").read_text())
    assert report["passed"] is True
    reference = torchvision.models.resnet18().eval()  # the cached file's weights, not some other net's
    reference.load_state_dict(state_dict)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.inference_mode():
        np.testing.assert_allclose(got, reference(torch.from_numpy(x)).numpy(), rtol=1e-3, atol=1e-4)


def test_export_onnx_offline_without_the_file_exits_4_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    p = _run("export.onnx", "resnet18", "--weights", "IMAGENET1K_V1", cwd=work, env={"TORCH_HOME": str(home)})
    assert p.returncode == 4, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert f"put {R18_FILE}" in p.stderr and f"{home}/hub/checkpoints" in p.stderr
    assert list(work.iterdir()) == [] and not home.exists()


def test_weights_with_a_checkpoint_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"not read")
    p = _run("export.onnx", "model.pt", "--weights", "IMAGENET1K_V1", cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "but model.pt is a file: drop --weights" in p.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.pt", "--weights", "DEFAULT"], "is a file: drop --weights"),
        (["resnet18", "--weights", "DEFAULT", "--arch", "resnet18"], "--arch names the network of a state-dict"),
        (["resnet18"], "resnet18 is an architecture name, not a file: add --weights NAME"),
        (["plain18"], "make one with python -m resnet.new plain18"),
        (["model.pt", "--download"], "--download and --no-check-hash go with --weights NAME"),
        (["model.pt", "--no-check-hash"], "--download and --no-check-hash go with --weights NAME"),
        (["resnet18", "--weights", "IMAGENET1K_V2"], "resnet18 has no weights named 'IMAGENET1K_V2'"),
        (["plain18", "--weights", "DEFAULT"], "only for the ImageNet residual nets"),
    ],
)
def test_every_command_refuses_the_same_nonsense_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"not read")
    for main in (export_onnx.main, export_trt.main, train.evaluate._main):
        assert resnet.run_cli(main, args, "cmd") == 2, main.__module__
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (main.__module__, err)
    with pytest.raises(UsageError, match=message.split(":")[0]):
        load_model_source(*args[:1], **_kwargs(args[1:]))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model.pt"]


def _kwargs(flags: list[str]) -> dict:
    """``load_model_source`` keyword arguments for the command-line flags of the test above."""
    out: dict = {}
    for i, flag in enumerate(flags):
        if flag in ("--weights", "--arch"):
            out[flag[2:]] = flags[i + 1]
        elif flag == "--download":
            out["download"] = True
        elif flag == "--no-check-hash":
            out["check_hash"] = False
    return out


def test_export_trt_runs_the_onnx_and_fp16_stages_on_the_named_weights(
    cached_r18: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resnet.run_cli(export_trt.main, [*NAMED, "--limit", "2", "--exporter", "torchscript"]) == 0
    for name in ("resnet18.onnx", "resnet18.fp16.onnx"):
        card = read_onnx_card(tmp_path / name)
        assert card.provenance["weights"] == R18_WEIGHTS and len(card.labels) == 1000
        assert json.loads((tmp_path / f"{name}.parity.json").read_text())["passed"] is True
    if not (tmp_path / "resnet18.plan").exists():
        captured = capsys.readouterr()
        assert "engine step skipped" in captured.out + captured.err


def test_evaluate_scores_the_named_weights_on_an_imagenet_labelled_folder(
    cached_r18: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    for label, photo in zip(("tench", "goldfish"), sample_photo_paths()):
        (data / label).mkdir(parents=True)
        img = Image.open(photo).convert("RGB")
        for i, size in enumerate((64, 48)):
            img.resize((size, size)).save(data / label / f"{i}.png")
    argv = [*NAMED, "--data", str(data), "--crops", "center", "--workers", "0", "--json"]
    assert train.evaluate.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "resnet18" and result["images"] == 4
    assert result["weights"] == "ResNet18_Weights.IMAGENET1K_V1" and result["checkpoint"] is None
    assert 0.0 <= result["top1_err"] <= 100.0 and result["top5_err"] <= result["top1_err"]
    assert train.evaluate.main(argv[:-1]) == 0
    assert "resnet18: top-1 err" in capsys.readouterr().out


def test_server_serves_the_named_weights_with_imagenet_labels(cached_r18: tuple, tmp_path: Path) -> None:
    model, card = load_named("resnet18", "IMAGENET1K_V1", check_hash=False)
    spec = "torchvision:resnet18:IMAGENET1K_V1"
    server = Server(["--model", spec, "--no-check-hash", "--threads", "1"], log_path=tmp_path / "server.log")
    server.start(timeout=180)
    try:
        assert httpx.get(server.url + "/readyz", timeout=10).json()["backend"].startswith("torch:")
        photo = sample_photo_paths()[0]
        answer = httpx.post(
            server.url + "/classify", params={"topk": 1000}, files=[("file", (photo.name, photo.read_bytes()))]
        )
        assert answer.status_code == 200, answer.text
        (result,) = answer.json()["results"]
        assert {e["label"] for e in result["topk"]} == set(card.labels)  # the 1000 ImageNet label names
        assert result["topk"][0]["label"] == card.labels[result["topk"][0]["index"]]
        got = probs_from_answer(result, card.num_classes)
        assert np.abs(got - reference_probs(photo, model, card)).max() <= 1e-4
    finally:
        assert server.stop() == 0


def test_server_without_the_cached_file_exits_4_before_listening(tmp_path: Path) -> None:
    home = tmp_path / "home"
    p = _run("serve", "--model", "torchvision:resnet18", "--port", "0", cwd=tmp_path, env={"TORCH_HOME": str(home)})
    lines = _error_lines(p.stderr)
    assert p.returncode == 4 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert len(lines) == 1 and f"put {R18_FILE}" in lines[0] and f"{home}/hub/checkpoints" in lines[0]
    assert "Uvicorn running" not in p.stderr and "serving" not in p.stderr


def test_torchvision_spec_is_checked_and_needs_an_export_for_other_backends(torch_home: Path) -> None:
    assert Settings(model="torchvision:resnet50").model == "torchvision:resnet50"
    for bad, message in [
        ("torchvision:plain18", "only for the ImageNet residual nets"),
        ("torchvision:resnet18:", "expected torchvision:ARCH or torchvision:ARCH:WEIGHTS"),
        ("torchvision:resnet7", "unknown architecture"),
    ]:
        with pytest.raises(UsageError, match=message):
            Settings(model=bad)
    with pytest.raises(UsageError, match="go with --model torchvision:ARCH"):
        Settings(model="model.onnx", check_hash=False)
    for choice in ("onnxruntime", "cuda", "tensorrt"):
        with pytest.raises(UsageError, match="python -m export.onnx resnet50 --weights IMAGENET1K_V2"):
            load_backend("torchvision:resnet50:IMAGENET1K_V2", choice)
    assert not torch_home.exists()  # refused before looking for the file


def test_export_quantize_quantizes_the_named_weights_in_the_current_folder(
    cached_r18: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from export import quantize

    monkeypatch.chdir(tmp_path)
    argv = [*NAMED, "--calib", "samples", "--calib-count", "4", "--limit", "2"]
    rc = resnet.run_cli(quantize.main, argv, "export.quantize")
    # random weights: near-ties may fail the INT8 agreement gate (exit 3, the graph kept as .rejected)
    assert rc in (0, 3), capsys.readouterr().err
    out = tmp_path / ("resnet18.int8.onnx" if rc == 0 else "resnet18.int8.onnx.rejected")
    card = read_onnx_card(out)
    assert card.precision == "int8" and card.provenance["weights"] == R18_WEIGHTS and len(card.labels) == 1000
    (tmp_path / "fp32.onnx").write_bytes(b"not read")
    assert resnet.run_cli(quantize.main, ["fp32.onnx", "--download"], "export.quantize") == 2
    assert "--download and --no-check-hash go with --weights NAME" in capsys.readouterr().err
