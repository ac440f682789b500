"""Every error a user can cause in export: one line, the exit code of docs/DESIGN.md §5, nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import resnet
from export import onnx as export_onnx
from export import parity, trt
from resnet.runtime.tensorrt import TensorRTRunner, tensorrt_available
from tests.engine_support import write_test_sidecar


def _run(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = resnet.run_cli(main, argv, prog="export")
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return rc, err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".tmp", ".onnx", ".plan", ".json"))


@pytest.fixture(scope="module")
def exported(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits checkpoint and its gated FP32 ONNX, in a folder of this module."""
    folder = tmp_path_factory.mktemp("export_errors")
    shutil.copy(digits_checkpoint, folder / "model.pt")
    assert export_onnx.main([str(folder / "model.pt"), "--max-batch", "12"]) == 0
    return folder


@pytest.mark.parametrize("main", [export_onnx.main, trt.main], ids=["export.onnx", "export.trt"])
def test_missing_checkpoint_exits_1_without_output(main, tmp_path: Path, capsys) -> None:
    rc, err = _run(main, [str(tmp_path / "nope.pt")], capsys)
    assert rc == 1 and "no such file" in err
    assert _leftovers(tmp_path) == []


def test_corrupt_checkpoint_exits_1_without_output(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a torch checkpoint" * 10)
    rc, err = _run(trt.main, [str(bad)], capsys)
    assert rc == 1 and "model.pt" in err
    assert _leftovers(tmp_path) == []


def test_unknown_arch_exits_2(tmp_path: Path, capsys) -> None:
    sd = tmp_path / "weights.pth"
    torch.save(resnet.create_model("resnet18").state_dict(), sd)
    rc, err = _run(export_onnx.main, [str(sd), "--arch", "resnet51"], capsys)
    assert rc == 2 and "unknown architecture" in err
    rc, err = _run(export_onnx.main, [str(sd)], capsys)  # a plain state dict needs --arch
    assert rc == 2 and "--arch" in err
    assert _leftovers(tmp_path) == []


def test_unwritable_output_folder_exits_1(digits_checkpoint: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc, err = _run(trt.main, [str(digits_checkpoint), "-o", str(blocker / "out")], capsys)
    assert rc == 1 and "cannot write to output folder" in err
    rc, err = _run(export_onnx.main, [str(digits_checkpoint), "-o", str(blocker / "m.onnx")], capsys)
    assert rc == 1 and "cannot write" in err


def test_onnx_without_model_card_is_refused_by_the_gate(exported: Path, tmp_path: Path, capsys) -> None:
    import onnx

    proto = onnx.load(str(exported / "model.onnx"))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    rc, err = _run(parity.main, [str(exported / "model.pt"), str(foreign)], capsys)
    assert rc == 1 and "no model card" in err
    assert foreign.exists() and not (tmp_path / "foreign.onnx.parity.json").exists()


def test_onnx_of_another_model_is_refused(exported: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other.pt"
    resnet.save_checkpoint(other, resnet.create_model("cifar_resnet8"), resnet.make_card("cifar_resnet8"))
    rc, err = _run(parity.main, [str(other), str(exported / "model.onnx")], capsys)
    assert rc == 1 and "not the same model" in err
    assert (exported / "model.onnx").exists()


def test_engine_without_sidecar_is_refused(exported: Path, tmp_path: Path, capsys) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    rc, err = _run(parity.main, [str(exported / "model.pt"), str(plan)], capsys)
    assert rc == 1 and "no sidecar" in err and plan.exists()


@pytest.mark.skipif(tensorrt_available()[0], reason="CUDA and TensorRT are present here")
def test_engine_on_a_machine_without_tensorrt_exits_4(exported: Path, tmp_path: Path, capsys) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine bytes")
    _, card = resnet.load_checkpoint(exported / "model.pt")
    write_test_sidecar(plan, card)
    rc, err = _run(parity.main, [str(exported / "model.pt"), str(plan)], capsys)
    assert rc == 4 and tensorrt_available()[1] in err
    assert plan.exists()  # a missing component is not a failed gate: nothing is renamed
    with pytest.raises(resnet.MissingComponentError):
        TensorRTRunner(plan)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--thresholds", "min_cosine"], "KEY=VALUE"),
        (["--thresholds", "bogus=1"], "bad threshold"),
        (["--thresholds", "min_cosine=high"], "needs a number"),
        (["--max-batch", "0"], "--max-batch"),
        (["--images", "/nonexistent/folder"], "no such folder"),
    ],
)
def test_bad_gate_options_exit_2(exported: Path, extra: list[str], message: str, capsys) -> None:
    rc, err = _run(parity.main, [str(exported / "model.pt"), str(exported / "model.onnx"), *extra], capsys)
    assert rc == 2 and message in err
    assert (exported / "model.onnx").exists()


def test_empty_images_folder_exits_2(exported: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    argv = [str(exported / "model.pt"), str(exported / "model.onnx"), "--images", str(tmp_path)]
    rc, err = _run(parity.main, argv, capsys)
    assert rc == 2 and "no image files" in err


def test_help_lists_every_option(capsys) -> None:
    for main in (export_onnx.main, parity.main, trt.main):
        with pytest.raises(SystemExit) as exc:
            main(["--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "--max-batch" in out and "--images" in out
