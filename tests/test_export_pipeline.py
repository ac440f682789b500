"""export.trt end to end on real trained models: FP32 + FP16 graphs, their parity gates, the skipped engine step."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import resnet
from export import parity, trt
from resnet.onnx_card import read_onnx_card
from resnet.runtime.tensorrt import tensorrt_available
from resnet.samples import write_digits_imagefolder

HAS_ENGINE, NO_ENGINE_REASON = tensorrt_available()


@pytest.fixture(scope="module")
def digits_export(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m export.trt model.pt`` (via main) on a copy of the trained digits checkpoint; returns its folder.

    The command's output is kept in ``export.log`` beside the artifacts.
    """
    folder = tmp_path_factory.mktemp("export_digits")
    shutil.copy(digits_checkpoint, folder / "model.pt")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert trt.main([str(folder / "model.pt")]) == 0
    (folder / "export.log").write_text(buf.getvalue())
    return folder


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_writes_gated_fp32_and_fp16_graphs_beside_checkpoint(digits_export: Path) -> None:
    names = sorted(p.name for p in digits_export.iterdir())
    assert "model.onnx" in names and "model.fp16.onnx" in names
    assert "model.onnx.parity.json" in names and "model.fp16.onnx.parity.json" in names
    assert not [n for n in names if n.endswith((".tmp", ".rejected"))], names
    log = (digits_export / "export.log").read_text()
    assert "== 1/3 FP32 ONNX" in log and "== 2/3 FP16 graph" in log
    if not HAS_ENGINE:
        assert "model.plan" not in names
        skipped = [line for line in log.splitlines() if "engine step skipped" in line]
        assert len(skipped) == 1 and NO_ENGINE_REASON in skipped[0]


@pytest.mark.parametrize("graph", ["model.onnx", "model.fp16.onnx"])
def test_onnx_batch_dimension_is_dynamic(digits_export: Path, graph: str) -> None:
    model, card = resnet.load_checkpoint(digits_export / "model.pt")
    sess = _session(digits_export / graph)
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # symbolic batch
    x = np.random.default_rng(0).standard_normal((20, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    tol = 1e-4 if graph == "model.onnx" else 5e-2
    for n in (1, 7, 20):
        out = sess.run(None, {"input": x[:n]})[0]
        assert out.shape == (n, 10) and out.dtype == np.float32
        np.testing.assert_allclose(out, ref[:n], atol=tol, rtol=0)
        assert (out.argmax(1) == ref[:n].argmax(1)).mean() >= 0.9


def test_model_card_round_trips_through_both_graphs(digits_export: Path) -> None:
    _, card = resnet.load_checkpoint(digits_export / "model.pt")
    assert read_onnx_card(digits_export / "model.onnx") == card
    assert read_onnx_card(digits_export / "model.fp16.onnx") == card.replace(precision="fp16")
    fp16 = onnx.load(str(digits_export / "model.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
    onnx.checker.check_model(fp16, full_check=True)


def test_fp32_and_fp16_reports_pass_with_thresholds_and_all_batch_sizes(digits_export: Path) -> None:
    for graph, preset in (("model.onnx", "fp32"), ("model.fp16.onnx", "fp16")):
        report = json.loads((digits_export / f"{graph}.parity.json").read_text())
        assert report["passed"] is True and report["failures"] == []
        assert report["thresholds"] == parity.PRESETS[preset].as_dict()
        assert report["reference"]["backend"] == "pytorch-fp32-cpu"
        assert report["candidate"]["precision"] == preset
        assert set(report["batch_sizes"]) == {"1", "10", "64"}
        assert report["batch_sizes"]["64"]["crops"] == 64
        m = report["metrics"]
        assert m["images"] == report["images"]["count"] >= 8 and report["images"]["crops"] == "ten"
        assert m["top1_agreement"] == 100.0
        assert m["cosine_min"] >= parity.PRESETS[preset].min_cosine
        assert 0 <= m["rel_l2"] < 0.01 and m["max_abs"] >= 0
    fp32 = json.loads((digits_export / "model.onnx.parity.json").read_text())
    assert fp32["metrics"]["max_abs"] < 1e-3  # FP32 ONNX equals PyTorch to float rounding


def test_labelled_gate_on_digits_imagefolder_reports_accuracy_of_both(digits_export: Path, tmp_path: Path) -> None:
    folder = write_digits_imagefolder(tmp_path / "digits", split="test", limit=40)
    candidate = tmp_path / "model.fp16.onnx"
    shutil.copy(digits_export / "model.fp16.onnx", candidate)
    rc = resnet.run_cli(parity.main, [str(digits_export / "model.pt"), str(candidate), "--images", str(folder)])
    assert rc == 0
    report = json.loads((tmp_path / "model.fp16.onnx.parity.json").read_text())
    acc = report["metrics"]["accuracy"]
    assert report["images"]["labelled"] and report["images"]["count"] == 40
    assert report["thresholds"]["max_top1_change"] == 0.2  # FP16 preset picked from the graph's weights
    assert abs(acc["candidate"]["top1"] - acc["reference"]["top1"]) <= 0.2
    assert acc["reference"]["top1"] > 10.0  # a trained model, better than chance on held-out digits
    assert candidate.exists()


def test_perturbed_weights_fail_the_gate_exit_3_and_artifact_is_rejected(
    digits_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, card = resnet.load_checkpoint(digits_export / "model.pt")
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.5 * p.std() * torch.randn(p.shape, generator=g))
    resnet.save_checkpoint(tmp_path / "perturbed.pt", model, card)
    candidate = tmp_path / "model.onnx"
    shutil.copy(digits_export / "model.onnx", candidate)
    rc = resnet.run_cli(parity.main, [str(tmp_path / "perturbed.pt"), str(candidate)], prog="export.parity")
    assert rc == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "failed its parity gate" in err and "model.onnx.rejected" in err
    assert not candidate.exists() and (tmp_path / "model.onnx.rejected").exists()
    report = json.loads((tmp_path / "model.onnx.parity.json").read_text())
    assert report["passed"] is False and report["failures"]


def test_failed_fp16_gate_in_pipeline_keeps_fp32_and_rejects_fp16(digits_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(digits_checkpoint, tmp_path / "model.pt")
    # An FP16 graph cannot reach this cosine: the gate must fail and say so.
    argv = [str(tmp_path / "model.pt"), "--fp16-thresholds", "min_cosine=0.99999999", "--max-batch", "12"]
    argv += ["--limit", "2"]
    assert resnet.run_cli(trt.main, argv) == 3
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "model.onnx" in names and "model.fp16.onnx" not in names and "model.fp16.onnx.rejected" in names
    assert json.loads((tmp_path / "model.fp16.onnx.parity.json").read_text())["passed"] is False
    assert not [n for n in names if n.endswith(".tmp")]


def test_cli_subprocess_require_engine_exits_4_after_making_the_graphs(
    digits_checkpoint: Path, tmp_path: Path, repo_root: Path
) -> None:
    if HAS_ENGINE:
        pytest.skip("TensorRT and CUDA are present: the engine step runs (covered by test_export_trt.py)")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "export.trt", str(digits_checkpoint), "-o", str(out), "--max-batch", "12"]
    cmd += ["--limit", "2"]
    proc = subprocess.run(cmd + ["--require-engine"], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("export.trt: error: engine step required")
    assert NO_ENGINE_REASON in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "model.onnx").exists() and (out / "model.fp16.onnx").exists()  # every other step was done
    assert "wrote" in proc.stdout and "parity passed" in proc.stdout
