"""``python -m export.quantize``: a real INT8 QDQ graph of the trained digits model, gated on held-out digits."""

from __future__ import annotations

import collections
import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from PIL import Image

import resnet
from export import calib, compare, parity, quantize, trt, trt_rules
from export.gate import PRESETS
from export.onnx import export_onnx
from resnet.onnx_card import read_onnx_card
from resnet.runtime.tensorrt import tensorrt_available
from resnet.samples import digits_images, sample_photo_paths, write_digits_imagefolder

FAST = ["--calib-count", "20", "--limit", "40", "--max-batch", "12"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = resnet.run_cli(quantize.main, argv, prog="export.quantize")
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return rc, err


@pytest.fixture(scope="module")
def quantized(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m export.quantize model.pt --calib digits`` (fewer images) on a copy of the digits model."""
    folder = tmp_path_factory.mktemp("quantize")
    shutil.copy(digits_checkpoint, folder / "model.pt")
    assert resnet.run_cli(quantize.main, [str(folder / "model.pt"), "--calib", "digits", *FAST]) == 0
    return folder


def test_int8_graph_has_qdq_nodes_an_int8_card_and_a_passed_report(quantized: Path) -> None:
    names = sorted(p.name for p in quantized.iterdir())
    assert names == ["model.int8.onnx", "model.int8.onnx.parity.json", "model.pt"], names
    proto = onnx.load(str(quantized / "model.int8.onnx"))
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights, "convolution weights are stored as int8"
    card = read_onnx_card(quantized / "model.int8.onnx")
    _, fp32_card = resnet.load_checkpoint(quantized / "model.pt")
    assert card.precision == "int8" and card.replace(precision="fp32", provenance=fp32_card.provenance) == fp32_card
    how = card.provenance["calibration"]
    assert how["source"] == "digits" and how["count"] == 20 and how["method"] == quantize.DEFAULT_METHOD
    assert how["target"] == "cpu" and how["activations"] == "uint8" and how["bias"] == "int32"  # CPU-tuned default
    report = json.loads((quantized / "model.int8.onnx.parity.json").read_text())
    assert report["passed"] is True and report["thresholds"] == PRESETS["int8"].as_dict()
    assert report["candidate"]["precision"] == "int8"
    assert report["images"]["source"] == "bundled digits (test split)" and report["images"]["labelled"]
    m = report["metrics"]
    assert m["top1_agreement"] >= 99.0 and abs(m["accuracy"]["top1_change"]) <= 0.5
    assert m["accuracy"]["reference"]["top1"] > 80.0  # a trained model, measured on digits it never saw


def test_int8_graph_agrees_with_pytorch_on_held_out_digits(quantized: Path) -> None:
    model, card = resnet.load_checkpoint(quantized / "model.pt")
    images, labels = digits_images("test")
    x = np.concatenate([resnet.preprocess(Image.fromarray(img), card, crops="center") for img in images[:100]])
    import torch

    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(quantized / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": x})[0]
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.97
    assert abs((out.argmax(1) == labels[:100]).mean() - (ref.argmax(1) == labels[:100]).mean()) <= 0.03


def test_fp32_onnx_input_is_quantized_against_that_graph(digits_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(digits_checkpoint, tmp_path / "model.pt")
    graph, _ = export_onnx(tmp_path / "model.pt", run_gate=False)
    out = tmp_path / "other.int8.onnx"
    assert resnet.run_cli(quantize.main, [str(graph), "-o", str(out), "--calib", "digits", *FAST]) == 0
    report = json.loads((tmp_path / "other.int8.onnx.parity.json").read_text())
    assert report["passed"] and report["reference"]["backend"] == "onnxruntime-fp32-cpu"
    assert read_onnx_card(out).precision == "int8"


def test_failed_int8_gate_exits_3_and_rejects(digits_checkpoint: Path, tmp_path: Path, capsys) -> None:
    shutil.copy(digits_checkpoint, tmp_path / "model.pt")
    argv = [str(tmp_path / "model.pt"), "--calib", "digits", *FAST, "--thresholds", "min_cosine=0.99999999"]
    rc, err = _run(argv, capsys)
    assert rc == 3 and len(err.splitlines()) == 1 and "model.int8.onnx.rejected" in err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["model.int8.onnx.parity.json", "model.int8.onnx.rejected", "model.pt"], names


def _unreadable(folder: Path) -> Path:
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


@pytest.mark.parametrize(
    "make, rc, words",
    [
        (lambda tmp: tmp / "missing", 2, "--calib"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", 2, "no image files"),
        (lambda tmp: _unreadable(tmp / "broken"), 1, "a.png"),
    ],
    ids=["missing-folder", "no-images", "unreadable-images"],
)
def test_bad_calibration_source_is_one_line_and_writes_nothing(
    digits_checkpoint: Path, tmp_path: Path, capsys, make, rc: int, words: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(digits_checkpoint, out / "model.pt")
    source = make(tmp_path)
    code, err = _run([str(out / "model.pt"), "--calib", str(source)], capsys)
    assert code == rc and len(err.splitlines()) == 1 and words in err, err
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]


def test_an_fp16_or_int8_graph_is_not_a_quantization_source(quantized: Path, tmp_path: Path, capsys) -> None:
    rc, err = _run([str(quantized / "model.int8.onnx"), "-o", str(tmp_path / "x.int8.onnx")], capsys)
    assert rc == 2 and "already a int8 graph" in err and not list(tmp_path.iterdir())


def test_gate_images_never_include_calibration_images(digits_checkpoint: Path, tmp_path: Path) -> None:
    _, card = resnet.load_checkpoint(digits_checkpoint)
    photos = sample_photo_paths()
    calibration, images = calib.prepare("samples", card, None, None, None)  # one source: split alternately
    assert calibration.count + len(images.files) == len(photos)
    assert images.files == [p.name for p in photos[1::2]] and calibration.count == len(photos[::2])
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in photos[:4]:
        shutil.copy(p, folder / f"copy-{p.name}")  # same bytes, other names: still the same images
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    for p in photos[:6]:
        shutil.copy(p, gate_dir / p.name)
    calibration, images = calib.prepare(str(folder), card, None, gate_dir, None)
    assert calibration.count == 4 and images.files == [p.name for p in sorted(photos[4:6])]
    assert calibration.crops.shape == (40, 3, card.input_size, card.input_size)


def test_parity_picks_the_int8_preset_for_a_qdq_graph(quantized: Path, tmp_path: Path) -> None:
    folder = write_digits_imagefolder(tmp_path / "heldout", split="test", limit=30)
    candidate = tmp_path / "model.int8.onnx"
    shutil.copy(quantized / "model.int8.onnx", candidate)
    argv = [str(quantized / "model.pt"), str(candidate), "--images", str(folder), "--max-batch", "12"]
    assert resnet.run_cli(parity.main, argv) == 0
    report = json.loads((tmp_path / "model.int8.onnx.parity.json").read_text())
    assert report["thresholds"] == PRESETS["int8"].as_dict() and report["candidate"]["precision"] == "int8"


def test_help_lists_the_options(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        quantize.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for flag in ("--calib", "--calib-count", "--method", "--thresholds", "-o", "--images", "--target"):
        assert flag in out


def test_trt_int8_rung_adds_a_gated_symmetric_int8_graph(digits_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(digits_checkpoint, tmp_path / "model.pt")
    argv = [str(tmp_path / "model.pt"), "--int8", "--calib", "digits", "--calib-count", "20", "--limit", "30"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert resnet.run_cli(trt.main, [*argv, "--max-batch", "12"]) == 0
    log = buf.getvalue()
    assert "== 3/4 INT8 graph" in log and "== 4/4 TensorRT engine" in log
    names = sorted(p.name for p in tmp_path.iterdir())
    assert {"model.onnx", "model.fp16.onnx", "model.int8.trt.onnx", "model.int8.trt.onnx.parity.json"} <= set(names)
    assert "model.int8.onnx" not in names  # the CPU-tuned graph is export.quantize's
    card = read_onnx_card(tmp_path / "model.int8.trt.onnx")
    how = card.provenance["calibration"]
    assert card.precision == "int8" and how["activations"] == "int8" and how["target"] == "tensorrt"
    assert how["bias"] == "float"
    proto = onnx.load(str(tmp_path / "model.int8.trt.onnx"))
    assert trt_rules.check_graph(proto) == []
    zero_points = [t for t in proto.graph.initializer if "zero_point" in t.name]
    types = {t.data_type for t in zero_points}
    assert types == {onnx.TensorProto.INT8}  # int8 activations and weights, no int32 biases
    assert all(not numpy_helper.to_array(t).any() for t in zero_points)  # symmetric: every zero point is 0
    assert "keeps TensorRT's ONNX rules" in log
    report = json.loads((tmp_path / "model.int8.trt.onnx.parity.json").read_text())
    assert report["passed"] and report["images"]["source"] == "bundled digits (test split)"
    if not tensorrt_available()[0]:
        skipped = [line for line in log.splitlines() if "engine step skipped" in line]
        assert len(skipped) == 1 and "FP32, FP16 and INT8 graphs" in skipped[0]
        assert "model.int8.plan" not in names


def test_compare_prints_accuracy_and_speed_side_by_side(quantized: Path, tmp_path: Path, capsys) -> None:
    graph, _ = export_onnx(quantized / "model.pt", tmp_path / "model.onnx", run_gate=False)
    capsys.readouterr()
    argv = [str(graph), str(quantized / "model.int8.onnx"), "--images", "digits", "--limit", "20"]
    assert resnet.run_cli(compare.main, argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("20 images from bundled digits (test split)")
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["model.onnx"][1] == "fp32" and rows["model.int8.onnx"][1] == "int8"
    assert rows["model.onnx"][3] == "100.00%" and float(rows["model.int8.onnx"][3].rstrip("%")) >= 90.0
    assert all(float(r[4]) > 0 for r in rows.values())  # images/s measured for both
    assert resnet.run_cli(compare.main, [str(graph), "--images", str(tmp_path / "nope")]) == 2


def test_each_target_has_its_own_default_file(tmp_path: Path) -> None:
    source = tmp_path / "model.pt"
    assert quantize.output_path(source, None).name == "model.int8.onnx"  # CPU-tuned, what the CPU server serves
    assert quantize.output_path(source, None, target="tensorrt").name == "model.int8.trt.onnx"


def _input_range(proto: onnx.ModelProto) -> float:
    """The float range the INT8 graph's input QuantizeLinear covers (scale x 255 for uint8 activations)."""
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    return float(inits[q.input[1]]) * 255.0


@pytest.mark.parametrize("count", [9, 8, 16])
def test_minmax_calibration_covers_every_image(digits_checkpoint: Path, count: int) -> None:
    """Issue 25 item 1: the first (widest) image's range survives however many images follow it; 8 and 16 images
    calibrate at all (ONNX Runtime's CalibMaxIntermediateOutputs used to drop them: "No data is collected")."""
    model, card = resnet.load_checkpoint(digits_checkpoint)
    from export.onnx import export_model

    fp32, _ = export_model(model, card)
    s = card.input_size
    crops = np.zeros((count * 10, 3, s, s), dtype=np.float32)  # mid-grey after normalisation
    board = (np.indices((s, s)).sum(0) % 2) * 2.0 - 1.0  # a black/white checkerboard: range 2
    crops[:10] = board.astype(np.float32)
    calibration = calib.Calibration("test", count, crops, 10)
    proto, card8 = quantize.quantize_graph(fp32, card, calibration, "minmax")
    assert 1.9 <= _input_range(proto) <= 2.1
    assert card8.provenance["calibration"]["count"] == count
