"""Checkpoint I/O and the model card: round trips, torchvision state dicts, and every user error as one line."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import resnet
import resnet.new
from resnet import artifacts
from resnet.checkpoint import read_checkpoint_file


@pytest.fixture()
def small_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = resnet.create_model("cifar_resnet8", num_classes=3)
    card = resnet.make_card("cifar_resnet8", name="tiny", labels=["a", "b", "c"], metrics={"top1_err": 12.5})
    return resnet.save_checkpoint(tmp_path / "tiny.pt", model, card)


def test_round_trip_keeps_weights_and_card(small_checkpoint: Path) -> None:
    raw = torch.load(small_checkpoint, weights_only=True)
    assert raw["format"] == "resnet-checkpoint" and raw["version"] == 1
    model, card = resnet.load_checkpoint(small_checkpoint)
    assert not model.training
    assert card.name == "tiny" and card.labels == ("a", "b", "c") and card.metrics["top1_err"] == 12.5
    assert card.shortcut == "A" and card.family == "cifar" and card.depth == 8
    assert card.provenance["created"]
    for k, v in raw["state_dict"].items():
        assert torch.equal(model.state_dict()[k], v)
    assert resnet.ModelCard.from_json(card.to_json()) == card  # the card round-trips through JSON


def test_torchvision_state_dict_loads_with_arch_and_gets_imagenet_card(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18-plain.pth"
    torch.save(tv.state_dict(), path)
    model, card = resnet.load_checkpoint(path, arch="resnet18")
    assert card.num_classes == 1000 and card.labels[0] == "tench" and len(card.labels) == 1000
    assert (card.input_size, card.resize_size, card.variant, card.shortcut) == (224, 256, "v1.5", "B")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), tv(x))


def test_torchvision_state_dict_without_arch_asks_for_it(tmp_path: Path) -> None:
    path = tmp_path / "sd.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(resnet.UsageError, match="--arch"):
        resnet.load_checkpoint(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(resnet.CheckpointError, match="no such file"):
        resnet.load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file_is_a_clear_error(small_checkpoint: Path) -> None:
    data = small_checkpoint.read_bytes()
    for cut in (1, 3, len(data) // 2, len(data) - 30):
        small_checkpoint.write_bytes(data[:cut])
        with pytest.raises(resnet.CheckpointError, match="is truncated"):
            resnet.load_checkpoint(small_checkpoint)


def test_legacy_pickle_checkpoint_cut_short_says_truncated(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"w": torch.zeros(3)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(resnet.CheckpointError, match="is truncated"):
        read_checkpoint_file(path)


def test_random_bytes_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(resnet.CheckpointError):
        resnet.load_checkpoint(path)


def test_random_files_say_not_a_checkpoint_with_no_warning_or_other_exception(tmp_path: Path) -> None:
    """Random 1,000-byte files used to escape as KeyError/IndexError or claim to need code execution."""
    rng = np.random.default_rng(0)
    path = tmp_path / "garbage.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked library warning fails the test
        for _ in range(300):
            path.write_bytes(rng.integers(0, 256, 1000, dtype=np.uint8).tobytes())
            with pytest.raises(resnet.CheckpointError) as err:
                read_checkpoint_file(path)
            assert "not a checkpoint" in str(err.value) and "code execution" not in str(err.value)
            assert len(str(err.value).splitlines()) == 1


def test_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(resnet.CheckpointError, match="empty"):
        resnet.load_checkpoint(path)


def test_legacy_pickle_with_garbage_is_corrupt_without_protocol_warning(tmp_path: Path) -> None:
    """After the old format's magic number, a protocol-100 pickle made torch warn "Detected pickle protocol"."""
    from resnet.checkpoint import LEGACY_MAGIC

    path = tmp_path / "old.pt"
    path.write_bytes(LEGACY_MAGIC + b"\x80\x64" + bytes(range(7, 200)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(resnet.CheckpointError, match="is corrupt|is truncated"):
            read_checkpoint_file(path)


def test_version_from_the_future_is_named(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    card = resnet.make_card("cifar_resnet8")
    obj = {"format": "resnet-checkpoint", "version": 99, "model_card": card.to_dict(), "state_dict": {}}
    torch.save(obj, path)
    with pytest.raises(resnet.CheckpointError, match="version 99 is not supported"):
        resnet.load_checkpoint(path)


def test_tensor_of_the_wrong_dtype_is_a_checkpoint_error(tmp_path: Path) -> None:
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    sd["fc.bias"] = torch.zeros(10, dtype=torch.complex64)
    path = tmp_path / "complex.pth"
    torch.save(sd, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(resnet.CheckpointError, match=r"dtype mismatch: fc\.bias torch\.complex64"):
            resnet.load_checkpoint(path, arch="resnet18")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/resnet-pwned",))


def test_pickle_that_needs_code_execution_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "resnet-checkpoint", "payload": _Exploit()}, path)
    Path("/tmp/resnet-pwned").unlink(missing_ok=True)
    with pytest.raises(resnet.CheckpointError, match="code execution"):
        resnet.load_checkpoint(path)
    assert not Path("/tmp/resnet-pwned").exists()


def test_state_dict_of_another_architecture_names_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(resnet.CheckpointError, match=r"missing keys: .*layer1\.2"):
        resnet.load_checkpoint(path, arch="resnet34")


def test_wrong_shapes_are_named(tmp_path: Path) -> None:
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(resnet.CheckpointError, match=r"shape mismatch: layer1\.0\.conv1\.weight"):
        resnet.load_checkpoint(path, arch="resnet18")


def test_unknown_architecture_is_usage_error(small_checkpoint: Path) -> None:
    with pytest.raises(resnet.UsageError, match="unknown architecture"):
        resnet.load_checkpoint(small_checkpoint, arch="resnet19")


def test_card_without_required_fields_is_refused(tmp_path: Path) -> None:
    model = resnet.create_model("cifar_resnet8")
    data = resnet.make_card("cifar_resnet8").to_dict()
    del data["labels"]
    with pytest.raises(resnet.CardError, match="labels"):
        resnet.ModelCard.from_dict(data)
    path = tmp_path / "x.pt"
    obj = {"format": "resnet-checkpoint", "version": 1, "model_card": data, "state_dict": model.state_dict()}
    torch.save(obj, path)
    with pytest.raises(resnet.CardError, match="labels"):
        resnet.load_checkpoint(path)


def test_save_checkpoint_needs_a_model_card(tmp_path: Path) -> None:
    model = resnet.create_model("cifar_resnet8")
    with pytest.raises(TypeError, match="ModelCard"):
        resnet.save_checkpoint(tmp_path / "x.pt", model, resnet.make_card("cifar_resnet8").to_dict())  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_failed_save_leaves_the_old_checkpoint_intact_and_no_temp_file(small_checkpoint: Path) -> None:
    before = small_checkpoint.read_bytes()
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        resnet.atomic_save({"not picklable": lambda: 0}, small_checkpoint)
    assert small_checkpoint.read_bytes() == before
    assert [p.name for p in small_checkpoint.parent.iterdir()] == [small_checkpoint.name]


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(resnet.CheckpointError, match="cannot write"):
        resnet.save_checkpoint(
            blocker / "sub" / "m.pt", resnet.create_model("cifar_resnet8"), resnet.make_card("cifar_resnet8")
        )


def test_weights_only_load_works_on_our_file(small_checkpoint: Path) -> None:
    obj = read_checkpoint_file(small_checkpoint)
    assert set(obj) == {"format", "version", "model_card", "state_dict", "weights_sha256", "card_sha256"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnet.new", *args], capture_output=True, text=True, timeout=120)


def test_new_cli_writes_a_checkpoint_and_prints_its_summary(tmp_path: Path) -> None:
    out = _run("cifar_resnet20", "-o", str(tmp_path / "m.pt"))
    assert out.returncode == 0, out.stderr
    assert "0.270 M params" in out.stdout
    _, card = resnet.load_checkpoint(tmp_path / "m.pt")
    assert card.depth == 20


def test_new_cli_converts_a_torchvision_state_dict(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "sd.pth")
    assert (
        resnet.new.main(["resnet18", "-o", str(tmp_path / "m.pt"), "--from-state-dict", str(tmp_path / "sd.pth")]) == 0
    )
    assert resnet.load_checkpoint(tmp_path / "m.pt")[1].labels[0] == "tench"


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["resnet19", "-o", "X"], 2, "unknown architecture"),
        (["resnet18", "-o", "X", "--from-state-dict", "/nonexistent.pth"], 1, "no such file"),
    ],
)
def test_new_cli_errors_are_one_line_without_traceback(tmp_path: Path, args: list, code: int, message: str) -> None:
    args = [a.replace("X", str(tmp_path / "m.pt")) for a in args]
    out = _run(*args)
    assert out.returncode == code
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def _with_header(small: Path, tmp_path: Path, **changes: object) -> Path:
    raw = torch.load(small, weights_only=True)
    raw.update(changes)
    path = tmp_path / "damaged.pt"
    torch.save(raw, path)
    return path


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("version", torch.zeros(0), "version a Tensor is not supported"),
        ("version", torch.ones(2), "version a Tensor is not supported"),
        ("version", torch.ones(1), "version a Tensor is not supported"),
        ("version", True, "version True is not supported"),
        ("format", torch.zeros(3), "not a resnet checkpoint|plain state dict with no model card"),
        ("model_card", torch.zeros(2), "model card holds something other than JSON data"),
        ("state_dict", torch.zeros(2), "has no usable state_dict"),
    ],
)
def test_header_fields_of_the_wrong_type_are_one_line_errors(
    small_checkpoint: Path, tmp_path: Path, field: str, value: object, message: str
) -> None:
    """A damaged header may hold a tensor (of 0, 1 or many elements) where a number or string belongs."""
    path = _with_header(small_checkpoint, tmp_path, **{field: value})
    for read in (resnet.load_checkpoint, artifacts.read_card):
        with pytest.raises(resnet.UserError, match=message):
            read(path)


def test_a_tensor_inside_the_card_is_a_one_line_error(small_checkpoint: Path, tmp_path: Path) -> None:
    card = torch.load(small_checkpoint, weights_only=True)["model_card"]
    card["metrics"] = {"top1_err": torch.ones(3)}
    path = _with_header(small_checkpoint, tmp_path, model_card=card)
    with pytest.raises(resnet.CheckpointError, match="model card holds something other than JSON data"):
        resnet.load_checkpoint(path)


def test_plain_state_dict_with_a_scalar_fc_weight_is_a_one_line_error(tmp_path: Path) -> None:
    sd = torchvision.models.resnet18().state_dict()
    sd["fc.weight"] = torch.tensor(1.0)
    torch.save(sd, tmp_path / "sd.pth")
    with pytest.raises(resnet.CheckpointError, match="shape mismatch: fc.weight"):
        resnet.load_checkpoint(tmp_path / "sd.pth", arch="resnet18")


@pytest.mark.parametrize("version", [torch.zeros(0), torch.ones(2)], ids=["0-elements", "2-elements"])
def test_serve_answers_a_tensor_version_in_one_line(small_checkpoint: Path, tmp_path: Path, version: object) -> None:
    path = _with_header(small_checkpoint, tmp_path, version=version)
    out = subprocess.run(
        [sys.executable, "-m", "serve", "--model", str(path), "--port", "0"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "version a Tensor is not supported" in lines[0]
