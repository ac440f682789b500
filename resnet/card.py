"""The model card (DESIGN.md §1): a JSON-serialisable dict that travels with every artifact."""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import CardError
from .registry import ModelSpec, parse_model_name

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel statistics of the CIFAR-10 training set, in [0, 1].
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

REQUIRED_FIELDS = (
    "name",
    "family",
    "arch",
    "depth",
    "variant",
    "shortcut",
    "num_classes",
    "labels",
    "input_size",
    "resize_size",
    "mean",
    "std",
)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's own metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def git_commit() -> str | None:
    """The current git commit of this checkout, or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def make_card(
    arch_name: str,
    *,
    name: str | None = None,
    num_classes: int | None = None,
    labels: Sequence[str] | None = None,
    variant: str = "v1.5",
    shortcut: str | None = None,
    input_size: int | None = None,
    resize_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a complete card for the network ``arch_name`` (e.g. ``"resnet50"``), filling the paper's defaults.

    ImageNet nets default to 224 crops of a 256 resize, ImageNet mean/std and labels; CIFAR nets to 32/32 and
    CIFAR-10 statistics and labels. ``provenance`` gets ``commit`` and ``created`` added when missing.
    """
    spec = parse_model_name(arch_name)
    imagenet = spec.family == "imagenet"
    if labels is None:
        labels = imagenet_labels() if imagenet and num_classes in (None, 1000) else None
        labels = labels or (list(CIFAR10_LABELS) if not imagenet and num_classes in (None, 10) else None)
        labels = labels or [str(i) for i in range(num_classes or (1000 if imagenet else 10))]
    labels = [str(x) for x in labels]
    num_classes = num_classes or len(labels)
    if len(labels) != num_classes:
        raise CardError(f"{len(labels)} labels given for {num_classes} classes")
    prov = dict(provenance or {})
    prov.setdefault("commit", git_commit())
    prov.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return {
        "name": name or spec.name,
        "family": spec.family,
        "arch": spec.arch,
        "depth": spec.depth,
        "variant": variant,
        "shortcut": (shortcut or spec.default_shortcut).upper(),
        "num_classes": num_classes,
        "labels": labels,
        "input_size": input_size or (224 if imagenet else 32),
        "resize_size": resize_size or (256 if imagenet else 32),
        "mean": [float(x) for x in (mean or (IMAGENET_MEAN if imagenet else CIFAR_MEAN))],
        "std": [float(x) for x in (std or (IMAGENET_STD if imagenet else CIFAR_STD))],
        "metrics": dict(metrics or {}),
        "provenance": prov,
    }


def validate_card(card: Any) -> dict[str, Any]:
    """Check a card has every required field with a sane value; return it. Raises ``CardError``."""
    if not isinstance(card, dict):
        raise CardError("model card is missing or not a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in card]
    if missing:
        raise CardError(f"model card lacks field(s): {', '.join(missing)}")
    if card["family"] not in ("imagenet", "cifar") or card["arch"] not in ("resnet", "plain"):
        raise CardError(f"model card has unknown family/arch {card['family']!r}/{card['arch']!r}")
    if len(card["labels"]) != card["num_classes"]:
        raise CardError(f"model card has {len(card['labels'])} labels for {card['num_classes']} classes")
    if len(card["mean"]) != 3 or len(card["std"]) != 3 or min(card["std"]) <= 0:
        raise CardError("model card mean/std must be three numbers each, std > 0")
    if not (0 < int(card["input_size"]) <= int(card["resize_size"])):
        raise CardError("model card needs 0 < input_size <= resize_size")
    card.setdefault("metrics", {})
    card.setdefault("provenance", {})
    return card


def card_spec(card: dict[str, Any]) -> ModelSpec:
    """The network a card describes (family, arch, depth) -> a ``ModelSpec`` whose ``.name`` feeds ``create_model``."""
    return ModelSpec(card["family"], card["arch"], int(card["depth"]))


def card_to_json(card: dict[str, Any]) -> str:
    """Serialise a card (as stored in ONNX ``metadata_props`` and sidecars)."""
    return json.dumps(card, sort_keys=False, separators=(",", ":"))


def card_from_json(text: str) -> dict[str, Any]:
    """Parse and validate a card serialised by ``card_to_json``."""
    try:
        return validate_card(json.loads(text))
    except json.JSONDecodeError as e:
        raise CardError(f"model card is not valid JSON: {e}") from None
