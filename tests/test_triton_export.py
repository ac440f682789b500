"""`python -m export.triton`: a Triton model repository that Triton's own config schema accepts and whose model
runs in ONNX Runtime exactly like the source graph."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import resnet
from export import triton
from resnet.card import ModelCard
from resnet.onnx_card import set_onnx_card
from resnet.preprocess import preprocess
from tests.engine_support import write_test_sidecar

REPO = Path(__file__).resolve().parent.parent


def _export_onnx(checkpoint: Path, out: Path, *, dynamic: bool = True, card: bool = True) -> Path:
    """Plain torch.onnx.export (this test must not wait on the export stage) with the card in the metadata."""
    model, model_card = resnet.load_checkpoint(checkpoint)
    model.eval()
    size = model_card.input_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, size, size),),
            str(out),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}} if dynamic else None,
            dynamo=False,
        )
    proto = onnx.load(str(out))
    if card:
        set_onnx_card(proto, model_card)
    onnx.save(proto, str(out))
    return out


@pytest.fixture(scope="module")
def digits_onnx(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export_onnx(digits_checkpoint, tmp_path_factory.mktemp("onnx") / "digits.onnx")


def parse_config(text: str) -> dict[str, Any]:
    """Parse config.pbtxt with Triton's own ModelConfig protobuf (strict: unknown fields fail)."""
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="tritonclient (the [dev] extra) holds Triton's config schema"
    )
    from google.protobuf import json_format, text_format

    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _digit_crops(images: np.ndarray, card: ModelCard, n: int) -> np.ndarray:
    return np.concatenate([preprocess(Image.fromarray(img), card, crops="center") for img in images[:n]])


def test_onnx_model_gives_a_repository_that_tritons_schema_accepts(digits_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    assert triton.main([str(digits_onnx), "--repo", str(repo)]) == 0
    card = resnet.onnx_card.read_onnx_card(digits_onnx)
    folder = repo / "digits-resnet8"
    cfg = parse_config((folder / "config.pbtxt").read_text())
    assert cfg["name"] == "digits-resnet8" and cfg["platform"] == "onnxruntime_onnx"
    assert int(cfg["max_batch_size"]) == 64
    (inp,) = cfg["input"]
    assert (inp["name"], inp["data_type"], [int(d) for d in inp["dims"]]) == ("input", "TYPE_FP32", [3, 32, 32])
    (out,) = cfg["output"]
    assert (out["name"], out["data_type"], [int(d) for d in out["dims"]]) == ("logits", "TYPE_FP32", [10])
    assert out["label_filename"] == "labels.txt"
    preferred = [int(b) for b in cfg["dynamic_batching"]["preferred_batch_size"]]
    assert preferred == [10, 20, 40, 60]
    assert int(cfg["dynamic_batching"]["max_queue_delay_microseconds"]) > 0
    (group,) = cfg["instance_group"]
    assert (group["count"], group.get("kind", "KIND_AUTO")) == (1, "KIND_AUTO")  # AUTO is the proto default
    assert (folder / "labels.txt").read_text().splitlines() == list(card.labels)
    assert resnet.ModelCard.from_dict(json.loads((folder / "model_card.json").read_text())) == card
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == [
        "digits-resnet8/1/model.onnx",
        "digits-resnet8/config.pbtxt",
        "digits-resnet8/labels.txt",
        "digits-resnet8/model_card.json",
    ]


def test_repository_model_runs_in_onnx_runtime_like_the_source(
    digits_onnx: Path, tmp_path: Path, digits_test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    folder = triton.write_repository(digits_onnx, tmp_path / "models")
    copied = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    source = ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"])
    images, labels = digits_test_images
    card = resnet.onnx_card.read_onnx_card(folder / "1" / "model.onnx")
    crops = _digit_crops(images, card, 60)  # centre crops of 60 held-out digits: a preferred batch size
    logits = copied.run(["logits"], {"input": crops})[0]
    np.testing.assert_array_equal(logits, source.run(["logits"], {"input": crops})[0])
    # These are real predictions of a trained model, labelled through the repository's label file.
    label_file = (folder / "labels.txt").read_text().splitlines()
    predicted = [label_file[i] for i in logits.argmax(axis=-1).tolist()]
    accuracy = np.mean([p == str(t) for p, t in zip(predicted, labels[:60])])
    assert accuracy >= 0.25, predicted  # several times chance (0.1); the fixture model is small and briefly trained


def test_python_m_export_triton_sets_name_batch_and_instances(digits_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.triton",
            str(digits_onnx),
            "--repo",
            str(repo),
            "--name",
            "digits",
            "--max-batch",
            "40",
            "--instances",
            "2",
            "--kind",
            "cpu",
            "--version",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "digits/3/model.onnx" in proc.stdout and "tritonserver --model-repository" in proc.stdout
    cfg = parse_config((repo / "digits" / "config.pbtxt").read_text())
    assert int(cfg["max_batch_size"]) == 40
    assert [int(b) for b in cfg["dynamic_batching"]["preferred_batch_size"]] == [10, 20, 40]
    assert cfg["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert (repo / "digits" / "3" / "model.onnx").is_file()


@pytest.mark.parametrize(
    ("max_batch", "expected"), [(10, [10]), (64, [10, 20, 40, 60]), (100, [10, 20, 40, 80, 100]), (25, [10, 20])]
)
def test_preferred_batch_sizes_are_whole_ten_crop_images(max_batch: int, expected: list[int]) -> None:
    assert triton.preferred_batch_sizes(max_batch) == expected


def test_plan_engine_gives_a_tensorrt_plan_config_bounded_by_its_profile(
    digits_checkpoint: Path, tmp_path: Path
) -> None:
    """Config generation from a .plan and its sidecar. The engine bytes are opaque to this step (copied as they
    are); no TensorRT runs here, so the file stands in for an engine built on a GPU machine."""
    _, card = resnet.load_checkpoint(digits_checkpoint)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine bytes are copied unchanged")
    write_test_sidecar(plan, card, profile={"min": 1, "opt": 10, "max": 32})
    folder = triton.write_repository(plan, tmp_path / "models")
    cfg = parse_config((folder / "config.pbtxt").read_text())
    assert cfg["platform"] == "tensorrt_plan" and int(cfg["max_batch_size"]) == 32
    assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    assert (folder / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert resnet.run_cli(triton.main, [str(plan), "--repo", str(tmp_path / "m2"), "--max-batch", "64"]) == 2
    assert resnet.run_cli(triton.main, [str(plan), "--repo", str(tmp_path / "m3"), "--kind", "cpu"]) == 2


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = resnet.run_cli(triton.main, argv, prog="export.triton")
    return code, capsys.readouterr().err


def test_bad_inputs_exit_with_one_line_and_leave_no_model_folder(
    digits_checkpoint: Path, digits_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "models"
    no_card = _export_onnx(digits_checkpoint, tmp_path / "nocard.onnx", card=False)
    frozen = _export_onnx(digits_checkpoint, tmp_path / "frozen.onnx", dynamic=False)
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage")
    (tmp_path / "lonely.plan").write_bytes(b"x")
    cases = [
        ([str(tmp_path / "missing.onnx")], 1, "no such file"),
        ([str(no_card)], 1, "no model card"),
        ([str(frozen)], 1, "frozen at 2"),
        ([str(tmp_path / "broken.onnx")], 1, "not a readable ONNX file"),
        ([str(tmp_path / "notes.txt")], 2, "unknown artifact type"),
        ([str(tmp_path / "lonely.plan")], 1, "no sidecar"),
        ([str(digits_onnx), "--max-batch", "5"], 2, "below 10"),
        ([str(digits_onnx), "--instances", "0"], 2, "at least 1"),
    ]
    for extra, code, message in cases:
        got, err = _cli([*extra, "--repo", str(repo)], capsys)
        assert (got, err.count("\n")) == (code, 1) and message in err, (extra, got, err)
    assert not repo.exists() or list(repo.iterdir()) == []


def test_existing_model_is_replaced_only_with_force(digits_onnx: Path, tmp_path: Path, capsys) -> None:
    repo = tmp_path / "models"
    triton.write_repository(digits_onnx, repo, max_batch=20)
    code, err = _cli([str(digits_onnx), "--repo", str(repo), "--max-batch", "30"], capsys)
    assert code == 1 and "--force" in err
    assert "max_batch_size: 20" in (repo / "digits-resnet8" / "config.pbtxt").read_text()
    assert triton.main([str(digits_onnx), "--repo", str(repo), "--max-batch", "30", "--force"]) == 0
    assert "max_batch_size: 30" in (repo / "digits-resnet8" / "config.pbtxt").read_text()
    assert [p.name for p in repo.iterdir()] == ["digits-resnet8"]  # no temp folders left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_checkpoint_is_exported_by_the_export_stage_behind_its_parity_gate(
    digits_checkpoint: Path, tmp_path: Path
) -> None:
    pytest.importorskip("export.onnx", reason="the export stage's ONNX exporter is not in this tree")
    folder = triton.write_repository(digits_checkpoint, tmp_path / "models", max_batch=20, gate_limit=2)
    cfg = parse_config((folder / "config.pbtxt").read_text())
    assert cfg["platform"] == "onnxruntime_onnx" and int(cfg["max_batch_size"]) == 20
    report = json.loads((folder / triton.PARITY_FILE).read_text())
    assert report["passed"] is True
    graph = folder / "1" / "model.onnx"
    assert resnet.onnx_card.read_onnx_card(graph).name == "digits-resnet8"
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    assert session.run(["logits"], {"input": np.zeros((20, 3, 32, 32), np.float32)})[0].shape == (20, 10)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["digits-resnet8"]
