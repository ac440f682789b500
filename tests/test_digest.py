"""Artifact integrity: checkpoints, ONNX graphs and engines carry a digest of their weights, checked at every load.

A corrupted artifact (bytes flipped inside its weights) is a one-line ``CheckpointError`` naming the file from the
``resnet`` readers, exit 1 with one line from ``python -m serve --model`` and from the export gate; an artifact written
before digests were recorded still loads, and a log line says it was not checked.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import resnet
from resnet import artifacts, digest
from resnet.checkpoint import state_dict_sha256
from resnet.onnx_card import read_onnx_card
from tests.cli_support import one_line_error, run_cli


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real checkpoint and its real ONNX export (written as export.onnx writes it), built once."""
    from export.onnx import export_model, save_proto

    root = tmp_path_factory.mktemp("digest")
    torch.manual_seed(0)
    model = resnet.create_model("cifar_resnet8", num_classes=3)
    card = resnet.make_card("cifar_resnet8", name="tiny", labels=["a", "b", "c"])
    pt = resnet.save_checkpoint(root / "model.pt", model, card)
    proto, _ = export_model(model, card, exporter="torchscript")
    save_proto(proto, root / "model.onnx")
    return {"checkpoint": pt, "onnx": root / "model.onnx"}


def _flip_in_checkpoint_weights(src: Path, dst: Path, bit: int = 0) -> None:
    """Copy ``src`` with one bit flipped in the middle of its largest tensor's bytes (torch stores them unpacked)."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 1 << bit
    dst.write_bytes(bytes(data))


def _flip_in_onnx_weights(src: Path, dst: Path) -> None:
    """Copy ``src`` with one bit flipped in the middle of its largest initializer's raw bytes."""
    proto = onnx.load(str(src))
    raw = max((t.raw_data for t in proto.graph.initializer), key=len)
    data = bytearray(src.read_bytes())
    at = data.find(raw)
    assert at > 0 and len(raw) > 64
    data[at + len(raw) // 2] ^= 0x10
    dst.write_bytes(bytes(data))


def test_artifacts_record_their_digest(made: dict[str, Path]) -> None:
    raw = torch.load(made["checkpoint"], weights_only=True)
    assert raw[digest.DIGEST_KEY] == state_dict_sha256(raw["state_dict"])
    props = {p.key: p.value for p in onnx.load(str(made["onnx"])).metadata_props}
    assert len(props[digest.DIGEST_KEY]) == 64 and "model_card" in props


def test_bit_flipped_checkpoint_is_refused_by_the_readers(made: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "flipped.pt"
    _flip_in_checkpoint_weights(made["checkpoint"], bad)
    for read in (resnet.load_checkpoint, artifacts.read_card):
        with pytest.raises(resnet.CheckpointError, match=r"flipped\.pt is corrupt: the sha256 of its weights"):
            read(bad)


def test_bit_flipped_onnx_graph_is_refused_by_the_readers(made: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "flipped.onnx"
    _flip_in_onnx_weights(made["onnx"], bad)
    for read in (read_onnx_card, artifacts.read_card):
        with pytest.raises(resnet.CheckpointError, match=r"flipped\.onnx is corrupt: the sha256 of its graph"):
            read(bad)


def test_every_flip_in_checkpoint_weights_is_refused(made: dict[str, Path], tmp_path: Path) -> None:
    """Flips at random places inside every tensor's bytes: none loads (torch itself checks no CRC)."""
    src = made["checkpoint"]
    data = src.read_bytes()
    with zipfile.ZipFile(src) as z:
        tensors = [i for i in z.infolist() if "/data/" in i.filename and i.file_size > 0]
    rng = np.random.default_rng(0)
    bad = tmp_path / "flip.pt"
    for info in rng.choice(tensors, size=min(25, len(tensors)), replace=False):
        name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
        extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
        at = info.header_offset + 30 + name_len + extra_len + int(rng.integers(0, info.file_size))
        mutant = bytearray(data)
        mutant[at] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(mutant))
        with pytest.raises(resnet.CheckpointError, match="is corrupt"):
            resnet.load_checkpoint(bad)


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_serve_refuses_a_corrupted_artifact_in_one_line(made: dict[str, Path], tmp_path: Path, kind: str) -> None:
    bad = tmp_path / ("flipped.pt" if kind == "checkpoint" else "flipped.onnx")
    (_flip_in_checkpoint_weights if kind == "checkpoint" else _flip_in_onnx_weights)(made[kind], bad)
    line = one_line_error(
        run_cli(
            "-m", "serve", "--model", str(bad), "--port", "0", "--backend", "onnxruntime" if kind == "onnx" else "auto"
        )
    )
    assert str(bad) in line and "is corrupt" in line


def test_export_gate_refuses_a_corrupted_candidate_and_reference(made: dict[str, Path], tmp_path: Path) -> None:
    bad_onnx, bad_pt = tmp_path / "flipped.onnx", tmp_path / "flipped.pt"
    _flip_in_onnx_weights(made["onnx"], bad_onnx)
    _flip_in_checkpoint_weights(made["checkpoint"], bad_pt)
    line = one_line_error(run_cli("-m", "export.parity", str(made["checkpoint"]), str(bad_onnx), "--limit", "2"))
    assert "flipped.onnx is corrupt" in line
    assert not artifacts.report_path(bad_onnx).exists()
    line = one_line_error(run_cli("-m", "export.parity", str(bad_pt), str(made["onnx"]), "--limit", "2"))
    assert "flipped.pt is corrupt" in line
    line = one_line_error(run_cli("-m", "export.onnx", str(bad_pt), "-o", str(tmp_path / "out.onnx")))
    assert "flipped.pt is corrupt" in line


@pytest.mark.parametrize(
    ("key", "pt_says", "onnx_says"),
    [
        (digest.DIGEST_KEY, "weights digest", "graph digest"),
        (digest.CARD_DIGEST_KEY, "model card digest", "model card digest"),  # issue 28: the card has its own
    ],
)
def test_artifacts_without_a_digest_still_load_and_say_so(
    made: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, key: str, pt_says: str, onnx_says: str
) -> None:
    raw = torch.load(made["checkpoint"], weights_only=True)
    del raw[key]
    old_pt = tmp_path / "old.pt"
    torch.save(raw, old_pt)
    proto = onnx.load(str(made["onnx"]))
    keep = [p for p in proto.metadata_props if p.key != key]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    old_onnx = tmp_path / "old.onnx"
    old_onnx.write_bytes(proto.SerializeToString())
    with caplog.at_level(logging.WARNING, logger="resnet.digest"):
        assert resnet.load_checkpoint(old_pt)[1].name == "tiny"
        assert read_onnx_card(old_onnx).name == "tiny"
    said = [r.getMessage() for r in caplog.records]
    assert any(f"old.pt carries no {pt_says}" in m for m in said), said
    assert any(f"old.onnx carries no {onnx_says}" in m for m in said), said


def test_a_recorded_digest_that_is_not_a_sha256_is_refused(made: dict[str, Path], tmp_path: Path) -> None:
    raw = torch.load(made["checkpoint"], weights_only=True)
    for value in (torch.zeros(2), "abc", 5):
        raw[digest.DIGEST_KEY] = value
        path = tmp_path / "odd.pt"
        torch.save(raw, path)
        with pytest.raises(resnet.CheckpointError, match="not a SHA-256"):
            resnet.load_checkpoint(path)


def _sidecar(plan: Path, sha: str | None) -> Path:
    card = resnet.make_card("cifar_resnet8", name="tiny", labels=["a", "b", "c"])
    return artifacts.write_sidecar(
        plan,
        artifacts.EngineSidecar(
            card=card,
            tensorrt="10.13.0",
            gpu_name="NVIDIA H100 80GB HBM3",
            compute_capability="9.0",
            profile={"min": 1, "opt": 10, "max": 64},
            plan_sha256=sha,
        ),
    )


def test_engine_sidecar_records_and_checks_the_plan_sha256(tmp_path: Path) -> None:
    """No GPU needed: the sidecar reader hashes the .plan file's bytes whatever they are."""
    plan = tmp_path / "model.plan"
    engine = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    plan.write_bytes(engine)
    _sidecar(plan, digest.bytes_sha256(engine))
    assert artifacts.read_sidecar(plan).plan_sha256 == digest.bytes_sha256(engine)
    flipped = bytearray(engine)
    flipped[2048] ^= 4
    plan.write_bytes(bytes(flipped))
    with pytest.raises(resnet.CheckpointError, match=r"model\.plan is corrupt: the sha256 of its engine"):
        artifacts.read_card(plan)
    _sidecar(plan, None)  # an engine built before digests were recorded
    assert artifacts.read_sidecar(plan).plan_sha256 is None
