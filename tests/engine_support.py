"""Engine sidecars for tests: no TensorRT runs here, so tests write the sidecar a GPU build would write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnet import artifacts, digest
from resnet.card import ModelCard


def write_test_sidecar(plan: Path, card: ModelCard, **fields: Any) -> Path:
    """Write ``<plan>.json`` as ``export.trt`` does (the plan's digest included when the plan is written first),
    with ``fields`` overriding the defaults."""
    values: dict[str, Any] = {
        "card": card,
        "tensorrt": "10.13.0",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "profile": {"min": 1, "opt": 10, "max": 64},
        "plan_sha256": digest.file_sha256(plan) if plan.is_file() else None,
        **fields,
    }
    return artifacts.write_sidecar(plan, artifacts.EngineSidecar(**values))
