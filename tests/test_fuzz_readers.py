"""Every reader of untrusted bytes, fuzzed with hypothesis: random bytes, truncations and bit flips of real files.

The property: a reader either returns its result or raises one line of the project's ``UserError`` family;
never another exception, never a library warning. Files: a real checkpoint, the ``last.pt`` of a real (stopped)
training run, a real exported ONNX graph, an engine sidecar as ``export.trt`` writes it, real CIFAR batch files.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resnet
from resnet import artifacts
from resnet.errors import UserError
from train.cifar import main as cifar_main
from train.cifar_pickle import load_batch, load_label_names, write_batch
from train.state import load_state, restore

REPO = Path(__file__).resolve().parent.parent
FUZZ = settings(
    max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real files of every kind we read, built once."""
    from export.onnx import export_model

    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    model = resnet.create_model("cifar_resnet8", num_classes=3)
    card = resnet.make_card("cifar_resnet8", name="tiny", labels=["a", "b", "c"])
    out: dict[str, Path] = {"checkpoint": resnet.save_checkpoint(root / "model.pt", model, card)}
    proto, _ = export_model(model, card, exporter="torchscript")
    (root / "model.onnx").write_bytes(proto.SerializeToString())
    out["onnx"] = root / "model.onnx"
    plan = root / "model.plan"
    plan.write_bytes(b"not read by the sidecar reader")
    out["sidecar"] = artifacts.write_sidecar(
        plan,
        artifacts.EngineSidecar(
            card=card,
            tensorrt="10.13.0",
            gpu_name="NVIDIA H100 80GB HBM3",
            compute_capability="9.0",
            profile={"min": 1, "opt": 10, "max": 64},
            build={"mode": "fp16", "seconds": 12.5},
        ),
    )
    run = root / "run"
    args = ["--dataset", "digits", "--depth", "8", "--batch-size", "16", "--max-iters", "3", "--stop-at-iter", "1"]
    assert cifar_main(args + ["--progress", "lines", "--no-tensorboard", "--out", str(run)]) == 0
    out["state"] = run / "last.pt"
    rng = np.random.default_rng(0)
    out["cifar"] = write_batch(root / "data_batch_1", rng.integers(0, 256, (4, 3072), dtype=np.uint8), [0, 1, 2, 9])
    return out


def _expect_user_error_or_result(read: Callable[[Path], Any], path: Path) -> None:
    """``read(path)`` returns, or raises one line of ``UserError``; a warning or another exception fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            read(path)
        except UserError as e:
            assert str(e) and "\n" not in str(e), repr(str(e))


def _mutants(data: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, truncations at any offset, and 1-3 bit flips (biased to the structure at both ends)."""
    n = len(data)
    offset = st.one_of(st.integers(0, min(n, 4096) - 1), st.integers(max(0, n - 4096), n - 1), st.integers(0, n - 1))

    def flip(bits: list[tuple[int, int]]) -> bytes:
        out = bytearray(data)
        for at, bit in bits:
            out[at] ^= 1 << bit
        return bytes(out)

    return st.one_of(
        st.binary(max_size=2048),
        st.integers(0, n - 1).map(lambda cut: data[:cut]),
        st.lists(st.tuples(offset, st.integers(0, 7)), min_size=1, max_size=3).map(flip),
    )


def _fuzz(files: dict[str, Path], kind: str, read: Callable[[Path], Any], suffix: str) -> None:
    original = files[kind]
    target = original.with_name(f"mutant{suffix}")

    @FUZZ
    @given(_mutants(original.read_bytes()))
    def check(mutant: bytes) -> None:
        target.write_bytes(mutant)
        _expect_user_error_or_result(read, target)

    check()


def test_checkpoints(files: dict[str, Path]) -> None:
    _fuzz(files, "checkpoint", resnet.load_checkpoint, ".pt")


def test_checkpoint_cards(files: dict[str, Path]) -> None:
    _fuzz(files, "checkpoint", artifacts.read_card, ".pt")


def test_training_states_load_and_restore(files: dict[str, Path]) -> None:
    model = resnet.create_model("cifar_resnet8", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def resume(path: Path) -> None:
        from train.schedule import LRSchedule

        st_ = load_state(path)
        schedule = LRSchedule(0.1, (), False, 3, None, 80.0, 400)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        restore(path, st_, model=model, optimizer=optimizer, schedule=schedule, scaler=scaler)

    _fuzz(files, "state", resume, ".pt")


def test_onnx_cards(files: dict[str, Path]) -> None:
    _fuzz(files, "onnx", artifacts.read_card, ".onnx")


def test_engine_sidecars(files: dict[str, Path]) -> None:
    sidecar = files["sidecar"]
    plan = sidecar.with_name("mutant.plan")
    plan.write_bytes(b"engine bytes are not read here")

    @FUZZ
    @given(_mutants(sidecar.read_bytes()))
    def check(mutant: bytes) -> None:
        artifacts.sidecar_path(plan).write_bytes(mutant)
        _expect_user_error_or_result(lambda _: artifacts.read_card(plan), plan)

    check()


def test_cifar_batches(files: dict[str, Path]) -> None:
    _fuzz(files, "cifar", load_batch, "")
    _fuzz(files, "cifar", load_label_names, ".meta")


def test_the_real_files_read_back(files: dict[str, Path]) -> None:
    """The property is not vacuous: the unmutated files load."""
    assert resnet.load_checkpoint(files["checkpoint"])[1].name == "tiny"
    assert artifacts.read_card(files["onnx"]).name == "tiny"
    assert artifacts.read_card(files["sidecar"].with_suffix("")).name == "tiny"
    assert load_state(files["state"])["step"] == 1
    assert load_batch(files["cifar"])["labels"].tolist() == [0, 1, 2, 9]


def _garbage(tmp_path: Path, seed: int) -> Path:
    """1,000 random bytes that torch's weights-only unpickler used to answer with KeyError/IndexError."""
    path = tmp_path / "garbage.pt"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    return path


@pytest.mark.parametrize(
    "command, seed",
    [(["-m", "export.onnx", "{}"], 62), (["-m", "serve", "--model", "{}"], 17)],
    ids=["export.onnx", "serve"],
)
def test_cli_answers_garbage_in_one_line(tmp_path: Path, command: list[str], seed: int) -> None:
    path = _garbage(tmp_path, seed)
    argv = [sys.executable, *[a.replace("{}", str(path)) for a in command]]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "error:" in lines[0] and "is not a checkpoint" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("field", ["format", "version"])
@pytest.mark.parametrize("value", [torch.tensor([]), torch.tensor([1, 2]), torch.tensor(1)], ids=["0", "2", "1"])
def test_training_state_with_a_tensor_header_field_is_refused_in_one_line(
    files: dict[str, Path], tmp_path: Path, field: str, value: torch.Tensor
) -> None:
    state = torch.load(files["state"], weights_only=True)
    state[field] = value
    damaged = tmp_path / "last.pt"
    torch.save(state, damaged)
    with pytest.raises(resnet.UserError, match="training state"):
        load_state(damaged)
