"""ONNX graphs take any height and width, and the parity gate checks them on the paper's multi-scale test.

A fixed-size graph still passes the contract and its gate (multi-scale is then reported as not checked); a graph
that is right at the card's size but wrong at other sizes passes the ten-crop protocol and fails the multi-scale one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import resnet
from export import gate
from export import onnx as export_onnx
from export.candidates import Reference
from export.images import load_image_set
from resnet.onnx_card import set_onnx_card

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the TorchScript exporter's notes on our test graphs


def _dims(path_or_proto: object) -> list[object]:
    proto = path_or_proto if hasattr(path_or_proto, "graph") else onnx.load(str(path_or_proto))
    return [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_both_exporters_write_symbolic_height_and_width(exporter: str) -> None:
    torch.manual_seed(0)
    model = resnet.create_model("resnet18", num_classes=5).eval()
    card = resnet.make_card("resnet18", num_classes=5, input_size=64, resize_size=72)
    proto, used = export_onnx.export_model(model, card, exporter)
    assert used == exporter
    assert _dims(proto) == ["batch", 3, "height", "width"]
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 64, 64), (2, 3, 48, 80), (2, 3, 96, 72)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], ref, rtol=1e-3, atol=1e-4)


def test_gate_report_has_the_multiscale_protocol(digits_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(digits_checkpoint, tmp_path / "model.pt")
    out, report = export_onnx.export_onnx(tmp_path / "model.pt", limit=6)
    assert out == tmp_path / "model.onnx" and report is not None and report["passed"]
    ms = json.loads((tmp_path / "model.onnx.parity.json").read_text())["multiscale"]
    assert ms["checked"] and ms["images"] == 4 and ms["sides"] == [28, 32, 36]
    assert ms["top1_agreement"] == 100.0 and ms["cosine_min"] > 0.99999
    assert len({tuple(s) for s in ms["sizes"]}) >= 3  # several heights and widths, not just S x S
    assert "multi-scale top-1 100.00%" in gate.summary_line(report)


def _write_graph(model: nn.Module, card: resnet.ModelCard, path: Path, dynamic_size: bool) -> None:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    size = card.input_size
    torch.onnx.export(
        model.eval(),
        (torch.zeros(2, 3, size, size),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": axes, "logits": {0: "batch"}},
        dynamo=False,
    )
    proto = onnx.load(str(path))
    set_onnx_card(proto, card)
    onnx.save(proto, str(path))


class WrongOffSize(nn.Module):
    """The network, plus an error that is zero at the card's size and large at any other height."""

    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        off = (x.shape[2] - self.size) * 1.0
        return logits + off * torch.arange(logits.shape[1], dtype=logits.dtype)


def _gate(reference_model: nn.Module, card: resnet.ModelCard, staged: Path) -> dict:
    images = load_image_set(None, card, limit=6)
    reference = Reference.from_model(reference_model, card, images, "test")
    return gate.gate_candidate(reference, staged, images, gate.PRESETS["fp32"], 16)


def test_fixed_size_graph_passes_and_says_multiscale_was_not_checked(digits_checkpoint: Path, tmp_path: Path) -> None:
    model, card = resnet.load_checkpoint(digits_checkpoint)
    path = tmp_path / "fixed.onnx"
    _write_graph(model, card, path, dynamic_size=False)
    assert _dims(path) == ["batch", 3, 32, 32]
    report = _gate(model, card, path)
    assert report["passed"]
    assert report["multiscale"] == {"checked": False, "why": "the candidate takes only the card's input size"}


def test_graph_wrong_only_off_size_fails_the_multiscale_protocol(digits_checkpoint: Path, tmp_path: Path) -> None:
    model, card = resnet.load_checkpoint(digits_checkpoint)
    path = tmp_path / "wrong.onnx"
    _write_graph(WrongOffSize(model, card.input_size), card, path, dynamic_size=True)
    with pytest.raises(resnet.ParityError, match="multi-scale: logit cosine min"):
        _gate(model, card, path)
    report = json.loads((tmp_path / "wrong.onnx.parity.json").read_text())
    assert report["metrics"]["top1_agreement"] == 100.0  # the ten-crop protocol alone would have admitted it
    assert all(f.startswith("multi-scale:") for f in report["failures"])
    assert (tmp_path / "wrong.onnx.rejected").exists() and not path.exists()
