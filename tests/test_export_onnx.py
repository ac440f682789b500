"""export.onnx: both exporters, every network family of the paper, and a torchvision ResNet-50 through both gates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

import resnet
from export import onnx as export_onnx
from export import trt
from resnet.onnx_card import read_onnx_card
from resnet.samples import sample_photo_paths


def _ort_logits(proto_or_path: object, x: np.ndarray) -> np.ndarray:
    src = proto_or_path.SerializeToString() if hasattr(proto_or_path, "SerializeToString") else str(proto_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet18", {"shortcut": "A"}),  # zero-padded identity shortcuts
        ("resnet50", {"variant": "v1", "shortcut": "C"}),  # paper's bottleneck stride, projection everywhere
        ("plain18", {}),  # no shortcuts at all
    ],
)
def test_dynamo_exporter_handles_network_variants_with_dynamic_batch(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = resnet.create_model(name, num_classes=7, **kwargs).eval()
    card = resnet.make_card(name, num_classes=7, input_size=64, resize_size=64, **kwargs)
    proto, used = export_onnx.export_model(model, card, "dynamo")
    assert used == "dynamo"
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    for n in (1, 3):
        np.testing.assert_allclose(_ort_logits(proto, x[:n]), ref[:n], rtol=1e-3, atol=1e-4)


def test_torchscript_exporter_passes_the_fp32_gate(digits_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(digits_checkpoint, tmp_path / "model.pt")
    out = tmp_path / "ts.onnx"
    rc = resnet.run_cli(export_onnx.main, [str(tmp_path / "model.pt"), "-o", str(out), "--exporter", "torchscript"])
    assert rc == 0
    import onnx

    proto = onnx.load(str(out))
    assert "torchscript" in proto.producer_version
    assert read_onnx_card(out).name == "digits-resnet8"
    report = json.loads((tmp_path / "ts.onnx.parity.json").read_text())
    assert report["passed"] and report["metrics"]["top1_agreement"] == 100.0
    x = np.random.default_rng(1).standard_normal((7, 3, 32, 32)).astype(np.float32)
    assert _ort_logits(out, x).shape == (7, 10)


def test_auto_exporter_falls_back_to_torchscript_when_dynamo_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("simulated torch.export failure")

    monkeypatch.setattr(export_onnx, "_export_dynamo", broken)
    model = resnet.create_model("cifar_resnet8").eval()
    card = resnet.make_card("cifar_resnet8")
    proto, used = export_onnx.export_model(model, card, "auto")
    assert used == "torchscript" and "torchscript" in proto.producer_version
    assert "falling back to the TorchScript exporter" in capsys.readouterr().out
    with pytest.raises(export_onnx.ExportError, match="dynamo exporter failed"):
        export_onnx.export_model(model, card, "dynamo")


@pytest.fixture(scope="module")
def torchvision_resnet50(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's resnet50() saved as a plain state dict, random init with BN statistics from real photos.

    Calibrating the BatchNorm running statistics (one train-mode pass over the sample photos) keeps activations in
    their usual range, so the logits mean something and the FP16 comparison is a fair one.
    """
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    card = resnet.make_card("resnet50")
    x = torch.from_numpy(np.concatenate([resnet.preprocess(p, card, crops="center") for p in sample_photo_paths()]))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
    model.train()
    with torch.no_grad():
        model(x)
    path = tmp_path_factory.mktemp("tv_resnet50") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return path


def test_torchvision_resnet50_state_dict_passes_fp32_and_fp16_gates(torchvision_resnet50: Path) -> None:
    # TorchScript here (dynamo is covered on ResNet-50 above): both exporters feed the FP16 converter and the gates.
    argv = [
        str(torchvision_resnet50),
        "--arch",
        "resnet50",
        "--exporter",
        "torchscript",
        "--limit",
        "2",
        "--max-batch",
        "12",
    ]
    assert resnet.run_cli(trt.main, argv) == 0
    folder = torchvision_resnet50.parent
    for graph, cosine in (("resnet50.onnx", 0.99999), ("resnet50.fp16.onnx", 0.999)):
        report = json.loads((folder / f"{graph}.parity.json").read_text())
        assert report["passed"], report["failures"]
        assert report["model"] == "resnet50" and report["images"]["count"] == 2
        assert set(report["batch_sizes"]) == {"1", "10", "12"}
        assert report["metrics"]["cosine_min"] >= cosine
    card = read_onnx_card(folder / "resnet50.fp16.onnx")
    assert card.num_classes == 1000 and card.labels[0] == "tench"
    assert card.provenance["format"] == "torchvision state dict"
