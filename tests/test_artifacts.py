"""resnet.artifacts: the one place that names artifact kinds and tells how to rebuild an engine."""

from __future__ import annotations

import pytest

from resnet import UsageError
from resnet.artifacts import artifact_kind, rebuild_hint


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
