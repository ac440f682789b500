"""The card inside the digest (issue 28): checkpoints, ONNX graphs and engine sidecars record ``card_sha256`` beside
their weights digest, so a byte flipped in a label, the mean or the name is a one-line ``CheckpointError`` naming the
file (exit 1), like one in the weights; metadata that is no longer UTF-8 is the same one line, never a traceback.
Artifacts written before the card digest still load, and a log line says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

import resnet
from resnet import artifacts, digest
from resnet.checkpoint import read_checkpoint_card
from resnet.onnx_card import check_onnx_file, read_onnx_card
from tests.cli_support import one_line_error, run_cli

LABELS = ["dog", "cat", "bird"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real checkpoint and its real ONNX export, built once."""
    from export.onnx import export_model, save_proto

    root = tmp_path_factory.mktemp("card_digest")
    torch.manual_seed(0)
    model = resnet.create_model("cifar_resnet8", num_classes=3)
    card = resnet.make_card("cifar_resnet8", name="tiny", labels=LABELS)
    pt = resnet.save_checkpoint(root / "model.pt", model, card)
    proto, _ = export_model(model, card, exporter="torchscript")
    save_proto(proto, root / "model.onnx")
    return {"checkpoint": pt, "onnx": root / "model.onnx"}


def _replaced(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    """Copy ``src`` with the one occurrence of ``old`` (same length) replaced by ``new``: a flip in place."""
    data = src.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new), (old, data.count(old))
    dst.write_bytes(data.replace(old, new))
    return dst


def test_every_artifact_records_its_card_digest(made: dict[str, Path]) -> None:
    card = read_checkpoint_card(made["checkpoint"])
    raw = torch.load(made["checkpoint"], weights_only=True)
    assert raw[digest.CARD_DIGEST_KEY] == digest.card_sha256(card.to_json())
    props = {p.key: p.value for p in onnx.load(str(made["onnx"])).metadata_props}
    assert props[digest.CARD_DIGEST_KEY] == digest.card_sha256(props["model_card"])


@pytest.mark.parametrize(
    ("old", "new", "what"),
    [
        (b'"dog"', b'"d/g"', "a label"),  # the dog -> d/g
        (b'"mean":[0.4914,0.4822', b'"mean":[0.4914,0.6822', "the mean"),
        (b'"name":"tiny"', b'"name":"tina"', "the name"),
    ],
)
def test_a_flipped_card_byte_in_an_onnx_graph_is_refused(
    made: dict[str, Path], tmp_path: Path, old: bytes, new: bytes, what: str
) -> None:
    bad = _replaced(made["onnx"], tmp_path / "flipped.onnx", old, new)
    for read in (read_onnx_card, check_onnx_file):
        with pytest.raises(resnet.CheckpointError, match=r"flipped\.onnx is corrupt: the sha256 of its model card"):
            read(bad)


def test_a_high_bit_flip_in_an_onnx_label_is_one_line_not_a_traceback(made: dict[str, Path], tmp_path: Path) -> None:
    import onnxruntime as ort

    from resnet.runtime.ort import onnx_session_card

    bad = _replaced(made["onnx"], tmp_path / "flipped.onnx", b'"dog"', b'"d\xefg"')  # not UTF-8 any more
    session = ort.InferenceSession(str(bad), providers=["CPUExecutionProvider"])
    with pytest.raises(resnet.CheckpointError, match=r"flipped\.onnx is corrupt"):
        onnx_session_card(session, bad)
    line = one_line_error(run_cli("-m", "serve", "--model", str(bad), "--port", "0", "--backend", "onnxruntime"))
    assert str(bad) in line and "is corrupt" in line


def test_the_serve_cli_refuses_an_onnx_graph_with_a_changed_card_in_one_line(
    made: dict[str, Path], tmp_path: Path
) -> None:
    bad = _replaced(made["onnx"], tmp_path / "flipped.onnx", b'"dog"', b'"d/g"')
    line = one_line_error(run_cli("-m", "serve", "--model", str(bad), "--port", "0", "--backend", "onnxruntime"))
    assert str(bad) in line and "is corrupt: the sha256 of its model card" in line


def test_a_flipped_card_byte_in_a_checkpoint_is_refused(made: dict[str, Path], tmp_path: Path) -> None:
    bad = _replaced(made["checkpoint"], tmp_path / "flipped.pt", b"dog", b"d/g")  # torch stores the pickle as is
    for read in (resnet.load_checkpoint, read_checkpoint_card):
        with pytest.raises(resnet.CheckpointError, match=r"flipped\.pt is corrupt: the sha256 of its model card"):
            read(bad)
    line = one_line_error(run_cli("-m", "export.onnx", str(bad), "-o", str(tmp_path / "out.onnx")))
    assert "flipped.pt is corrupt" in line
    assert not (tmp_path / "out.onnx").exists()


def test_a_changed_card_in_an_engine_sidecar_is_refused(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 256)
    card = resnet.make_card("cifar_resnet8", name="tiny", labels=LABELS)
    sidecar = artifacts.EngineSidecar(
        card=card,
        tensorrt="10.13.0",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        profile={"min": 1, "opt": 10, "max": 64},
        plan_sha256=digest.file_sha256(plan),
    )
    path = artifacts.write_sidecar(plan, sidecar)
    assert artifacts.read_sidecar(plan).card == card
    data = json.loads(path.read_text())
    data["card"]["labels"][0] = "d/g"
    path.write_text(json.dumps(data, indent=2))
    with pytest.raises(resnet.CheckpointError, match="is corrupt: the sha256 of its model card"):
        artifacts.read_card(plan)
