"""The model card (docs/DESIGN.md §1): one typed, frozen record that travels with every artifact.

``ModelCard`` is the only place card fields are named, typed and validated. It needs no torch, so a server that
serves an ``.onnx`` or a ``.plan`` reads cards without importing it. Stored as JSON (checkpoint ``model_card``,
ONNX ``metadata_props["model_card"]``, engine sidecar ``card``) through ``to_dict``/``from_dict``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CardError, UsageError
from .names import SHORTCUTS, VARIANTS, ModelSpec, parse_model_name
from .runtime.kinds import PRECISIONS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel statistics of the CIFAR-10 training set, in [0, 1].
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

FAMILIES = ("imagenet", "cifar")
ARCHS = ("resnet", "plain")


@dataclass(frozen=True)
class ModelCard:
    """How a model was made and how to feed it; docs/DESIGN.md §1 lists every field (a test keeps them equal)."""

    name: str  # human name, e.g. "resnet101" or "digits-resnet20"
    family: str  # "imagenet" | "cifar": which network family of the paper
    arch: str  # "resnet" | "plain": residual or the paper's plain baseline
    depth: int  # layers as the paper counts them
    variant: str  # "v1.5" (stride in the 3x3, torchvision) | "v1" (stride in the first 1x1, the paper)
    shortcut: str  # "A" zero-pad identity | "B" projection on change | "C" all projection
    num_classes: int  # output size
    labels: tuple[str, ...]  # one label per class, in output order
    input_size: int  # crop size in pixels
    resize_size: int  # the shorter side is resized to this before cropping
    mean: tuple[float, float, float]  # normalisation of RGB in [0, 1]
    std: tuple[float, float, float]
    precision: str = "fp32"  # what the artifact computes in: fp32 | fp16 | int8 | bf16
    metrics: Mapping[str, Any] = field(default_factory=dict)  # what was measured, and how ("protocol")
    provenance: Mapping[str, Any] = field(default_factory=dict)  # how it was made (commit, created, args, dataset…)

    def __post_init__(self) -> None:
        _check(self)

    @property
    def spec(self) -> ModelSpec:
        """The network this card describes; ``spec.name`` feeds ``resnet.create_model``."""
        return ModelSpec(self.family, self.arch, self.depth)

    @classmethod
    def from_dict(cls, data: Any) -> ModelCard:
        """A card from its JSON object; ``CardError`` naming what is missing or wrong. Unknown keys are ignored."""
        if not isinstance(data, Mapping):
            raise CardError("model card is missing or not a JSON object")
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise CardError(f"model card lacks field(s): {', '.join(missing)}")
        try:
            return cls(
                name=_text(data["name"], "name"),
                family=_text(data["family"], "family"),
                arch=_text(data["arch"], "arch"),
                depth=_whole(data["depth"], "depth"),
                variant=_text(data["variant"], "variant"),
                shortcut=_text(data["shortcut"], "shortcut").upper(),
                num_classes=_whole(data["num_classes"], "num_classes"),
                labels=tuple(_text(x, "labels[]") for x in _list(data["labels"], "labels")),
                input_size=_whole(data["input_size"], "input_size"),
                resize_size=_whole(data["resize_size"], "resize_size"),
                mean=tuple(_number(x, "mean[]") for x in _list(data["mean"], "mean")),  # type: ignore[arg-type]
                std=tuple(_number(x, "std[]") for x in _list(data["std"], "std")),  # type: ignore[arg-type]
                precision=_text(data.get("precision", "fp32"), "precision"),
                metrics=dict(_mapping(data.get("metrics", {}), "metrics")),
                provenance=dict(_mapping(data.get("provenance", {}), "provenance")),
            )
        except RecursionError:
            raise CardError("model card is nested too deeply") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored in artifacts (lists, not tuples)."""
        out = dataclasses.asdict(self)
        for key in ("labels", "mean", "std"):
            out[key] = list(out[key])
        return out

    def to_json(self) -> str:
        """Compact JSON (ONNX ``metadata_props`` and sidecars)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        """Parse and validate a card written by ``to_json``."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise CardError(f"model card is not valid JSON ({str(e)[:80]})") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_metrics(self, **metrics: Any) -> ModelCard:
        """A copy whose ``metrics`` are replaced by ``metrics``."""
        return self.replace(metrics=dict(metrics))

    def with_provenance(self, **entries: Any) -> ModelCard:
        """A copy with ``entries`` added to (or replacing keys of) ``provenance``."""
        return self.replace(provenance={**self.provenance, **entries})


FIELDS = tuple(f.name for f in dataclasses.fields(ModelCard))
REQUIRED_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(ModelCard)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


def _check(card: ModelCard) -> None:
    """Validation in one place: every rule a card must satisfy."""
    if not card.name:
        raise CardError("model card has an empty name")
    if card.family not in FAMILIES or card.arch not in ARCHS:
        raise CardError(f"model card has unknown family/arch {card.family!r}/{card.arch!r}")
    try:
        parse_model_name(card.spec.name)
    except UsageError as e:
        raise CardError(f"model card names no network of the paper: {e}") from None
    if card.variant not in VARIANTS:
        raise CardError(f"model card has unknown variant {card.variant!r} (known: {', '.join(VARIANTS)})")
    if card.shortcut not in SHORTCUTS:
        raise CardError(f"model card has unknown shortcut {card.shortcut!r} (known: {', '.join(SHORTCUTS)})")
    if card.num_classes < 1 or len(card.labels) != card.num_classes:
        raise CardError(f"model card has {len(card.labels)} labels for {card.num_classes} classes")
    if len(card.mean) != 3 or len(card.std) != 3 or min(card.std) <= 0:
        raise CardError("model card mean/std must be three numbers each, std > 0")
    if not (0 < card.input_size <= card.resize_size <= 8192):
        raise CardError("model card needs 0 < input_size <= resize_size <= 8192")
    if card.precision not in PRECISIONS:
        raise CardError(f"model card has unknown precision {card.precision!r} (known: {', '.join(PRECISIONS)})")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise CardError(f"model card field {what} must be a string, not {type(value).__name__}")
    return value


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise CardError(f"model card field {what} must be a whole number, not {value!r:.40}")
    return int(value)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CardError(f"model card field {what} must be a finite number, not {value!r:.40}")
    return float(value)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise CardError(f"model card field {what} must be a list, not {type(value).__name__}")
    return list(value)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CardError(f"model card field {what} must be an object, not {type(value).__name__}")
    return value


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's own metadata (no download; needs torchvision)."""
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
    metrics: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> ModelCard:
    """A complete card for the network ``arch_name`` (e.g. ``"resnet50"``), filling the paper's defaults.

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
    return ModelCard(
        name=name or spec.name,
        family=spec.family,
        arch=spec.arch,
        depth=spec.depth,
        variant=variant,
        shortcut=(shortcut or spec.default_shortcut).upper(),
        num_classes=num_classes,
        labels=tuple(labels),
        input_size=input_size or (224 if imagenet else 32),
        resize_size=resize_size or (256 if imagenet else 32),
        mean=tuple(float(x) for x in (mean or (IMAGENET_MEAN if imagenet else CIFAR_MEAN))),  # type: ignore[arg-type]
        std=tuple(float(x) for x in (std or (IMAGENET_STD if imagenet else CIFAR_STD))),  # type: ignore[arg-type]
        metrics=dict(metrics or {}),
        provenance=prov,
    )
