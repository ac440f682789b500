"""resnet.artifacts: the one place that names artifact kinds and tells how to rebuild an engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnet import UsageError, artifacts
from resnet.artifacts import artifact_kind, rebuild_hint
from resnet.card import ModelCard, make_card
from resnet.errors import CardError
from tests.engine_support import write_test_sidecar

R50 = make_card("resnet50")
# what export.trt --multiscale records for ResNet-50 (tests/test_trt_profiles.py checks the profile it comes from)
R50_MS = {"batch": [1, 2, 8], "min_side": 224, "max_side": 1280, "sides": [224, 256, 384, 480, 640]}


@pytest.mark.parametrize(
    "name, kind",
    [
        ("model.pt", "checkpoint"),
        ("resnet50-11ad3fa6.pth", "checkpoint"),
        ("run.ckpt", "checkpoint"),
        ("model.onnx", "onnx"),
        ("model.fp16.onnx", "onnx"),
        ("model.int8.onnx", "onnx"),
        ("model.plan", "engine"),
        ("MODEL.ENGINE", "engine"),
    ],
)
def test_artifact_kind_from_the_file_name(name: str, kind: str) -> None:
    assert artifact_kind(name) == kind


def test_unknown_suffix_is_a_usage_error_naming_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown artifact type"):
        artifact_kind("notes.txt")


def test_rebuild_hint_names_the_checkpoint_and_the_int8_rung() -> None:
    assert rebuild_hint("runs/a/model.plan").endswith("export.trt runs/a/model.pt --require-engine")
    assert rebuild_hint("runs/a/model.int8.plan").endswith("export.trt runs/a/model.pt --require-engine --int8")


def _sidecar(tmp_path: Path, card: ModelCard, **fields: object) -> artifacts.EngineSidecar:
    plan = tmp_path / "model.plan"
    write_test_sidecar(plan, card, **fields)
    return artifacts.read_sidecar(plan)


def test_sidecar_round_trips_the_multiscale_profile(tmp_path: Path) -> None:
    side = _sidecar(tmp_path, R50, multiscale=R50_MS)
    assert side.multiscale == R50_MS and side.profile == {"min": 1, "opt": 10, "max": 64}
    data = json.loads((tmp_path / "model.plan.json").read_text())
    assert data["version"] == 2 and data["multiscale"] == R50_MS


def test_sidecar_without_multiscale_has_no_such_key(tmp_path: Path) -> None:
    assert _sidecar(tmp_path, R50).multiscale is None
    assert "multiscale" not in json.loads((tmp_path / "model.plan.json").read_text())


@pytest.mark.parametrize(
    "bad, why",
    [
        ("yes", "must be an object"),
        ({**R50_MS, "batch": [1, 2]}, "batch must be"),
        ({**R50_MS, "batch": [4, 2, 8]}, "out of order"),
        ({**R50_MS, "min_side": 0}, "min_side must be"),
        ({**R50_MS, "max_side": 100}, "out of order"),
        ({**R50_MS, "sides": []}, "non-empty"),
        ({**R50_MS, "sides": [224, 2000]}, "outside"),
        ({k: v for k, v in R50_MS.items() if k != "sides"}, "KeyError"),
    ],
)
def test_a_malformed_multiscale_field_is_refused_with_one_line(tmp_path: Path, bad: object, why: str) -> None:
    plan = tmp_path / "model.plan"
    write_test_sidecar(plan, R50)
    data = json.loads(artifacts.sidecar_path(plan).read_text())
    artifacts.sidecar_path(plan).write_text(json.dumps({**data, "multiscale": bad}))
    with pytest.raises(CardError, match="is malformed") as info:
        artifacts.read_sidecar(plan)
    assert why in str(info.value) and "\n" not in str(info.value)
