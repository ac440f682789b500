"""A graph whose FP16 activations overflow: the gate says so in words, rejects it, and no numpy warning leaks."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

import resnet
from export import parity, trt
from export.onnx import export_onnx
from resnet.onnx_card import read_onnx_card, set_onnx_card


@pytest.fixture(scope="module")
def loud_checkpoint(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained digits network with every convolution's weights scaled by 8: activations grow ~8x per layer, fine
    in FP32, past FP16's largest value (65504) inside the network, so the FP16 graph's logits come out NaN -- what a
    random-init deep ImageNet network does (its logits reach ~1e8)."""
    model, card = resnet.load_checkpoint(digits_checkpoint)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(8.0)
    path = tmp_path_factory.mktemp("overflow") / "model.pt"
    resnet.save_checkpoint(path, model, card)
    return path


def test_fp16_overflow_is_named_rejected_and_silent(
    loud_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(loud_checkpoint, tmp_path / "model.pt")
    argv = [str(tmp_path / "model.pt"), "--max-batch", "12", "--limit", "3"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = resnet.run_cli(trt.main, argv, prog="export.trt")
    captured = capsys.readouterr()
    assert rc == 3
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    assert "RuntimeWarning" not in captured.err + captured.out and "Traceback" not in captured.err
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "failed its parity gate: FP16 overflow: " in err[0] and "outputs NaN/Inf" in err[0]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "model.onnx" in names and "model.fp16.onnx" not in names and "model.fp16.onnx.rejected" in names
    report = json.loads((tmp_path / "model.fp16.onnx.parity.json").read_text())  # strict JSON: no NaN in it
    assert report["passed"] is False and report["failures"][0].startswith("FP16 overflow: ")
    bad, total = (int(x) for x in report["failures"][0].split(": ")[1].split(" outputs")[0].split(" of "))
    assert 0 < bad <= total
    # the rejected graph really gives non-finite logits
    session = ort.InferenceSession(str(tmp_path / "model.fp16.onnx.rejected"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((10, 3, 32, 32)).astype(np.float32)
    assert not np.isfinite(session.run(None, {"input": x})[0]).all()
    fp32 = json.loads((tmp_path / "model.onnx.parity.json").read_text())
    assert fp32["passed"] is True  # the same network in FP32 is fine: only FP16 overflows


def test_infinite_logits_are_counted_without_numpy_warnings(
    digits_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real graph whose outputs overflow float32 to +-Inf (the logits times 1e38) next to finite ones."""
    shutil.copy(digits_checkpoint, tmp_path / "model.pt")
    graph, _ = export_onnx(tmp_path / "model.pt", run_gate=False)
    proto = onnx.load(str(graph))
    for node in proto.graph.node:
        node.output[:] = ["pre_logits" if name == "logits" else name for name in node.output]
    proto.graph.initializer.append(numpy_helper.from_array(np.array(1e38, dtype=np.float32), "huge"))
    proto.graph.node.append(helper.make_node("Mul", ["pre_logits", "huge"], ["logits"]))
    set_onnx_card(proto, read_onnx_card(graph))  # sealed as our exporters seal a graph: its digest is checked
    candidate = tmp_path / "loud.onnx"
    candidate.write_bytes(proto.SerializeToString())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = resnet.run_cli(parity.main, [str(tmp_path / "model.pt"), str(candidate), "--limit", "2"], prog="parity")
    captured = capsys.readouterr()
    assert rc == 3 and not [w for w in caught if issubclass(w.category, RuntimeWarning)], [
        str(w.message) for w in caught
    ]
    assert "RuntimeWarning" not in captured.err + captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "FP32 non-finite outputs: " in err[0] and "outputs NaN/Inf" in err[0], err
    report = json.loads((tmp_path / "loud.onnx.parity.json").read_text())
    bad, total = (int(x) for x in report["failures"][0].split(": ")[1].split(" outputs")[0].split(" of "))
    assert 0 < bad < total  # some logits overflowed, the small ones did not
    assert report["batch_sizes"]["10"]["nonfinite"] > 0 and report["metrics"]["cosine_min"] is None
