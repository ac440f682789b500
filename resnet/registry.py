"""Model names -> networks: ``resnet18 ... resnet152``, ``plain18 ... plain152``, ``cifar_resnet20``, ``cifar_plain56`` ..."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .errors import UsageError
from .models import SHORTCUTS, VARIANTS, BasicBlock, Bottleneck, CifarResNet, ResNet

# Table 1 of the paper: block type and blocks per stage for each ImageNet depth.
IMAGENET_LAYERS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
# Section 4.2: the CIFAR depths the paper reports (any 6n+2 works).
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)

_NAME = re.compile(r"^(?P<cifar>cifar_)?(?P<arch>resnet|plain)(?P<depth>\d+)$")


@dataclass(frozen=True)
class ModelSpec:
    """What a model name means: family (``imagenet``/``cifar``), arch (``resnet``/``plain``) and depth."""

    family: str
    arch: str
    depth: int

    @property
    def name(self) -> str:
        prefix = "cifar_" if self.family == "cifar" else ""
        return f"{prefix}{self.arch}{self.depth}"

    @property
    def default_shortcut(self) -> str:
        # The paper uses option A on CIFAR (Section 4.2) and option B as the ImageNet default (Table 3).
        return "A" if self.family == "cifar" else "B"


def parse_model_name(name: str) -> ModelSpec:
    """Parse and validate a model name; raise ``UsageError`` with the valid choices otherwise."""
    m = _NAME.match(name.strip().lower())
    if not m:
        raise UsageError(f"unknown architecture {name!r}; known: {', '.join(list_models())} (CIFAR: any 6n+2 depth)")
    family = "cifar" if m["cifar"] else "imagenet"
    depth = int(m["depth"])
    if family == "imagenet" and depth not in IMAGENET_LAYERS:
        raise UsageError(f"unknown architecture {name!r}: ImageNet depths are {', '.join(map(str, IMAGENET_LAYERS))}")
    if family == "cifar" and (depth < 8 or (depth - 2) % 6):
        raise UsageError(f"unknown architecture {name!r}: CIFAR depths are 6n+2 with n >= 1 (20, 32, 44, 56, 110 ...)")
    return ModelSpec(family, m["arch"], depth)


def list_models() -> list[str]:
    """The named networks of the paper (CIFAR nets accept any other 6n+2 depth too)."""
    names = [f"{arch}{d}" for arch in ("resnet", "plain") for d in IMAGENET_LAYERS]
    names += [f"cifar_{arch}{d}" for arch in ("resnet", "plain") for d in CIFAR_DEPTHS]
    return names


def create_model(
    name: str,
    num_classes: int | None = None,
    variant: str = "v1.5",
    shortcut: str | None = None,
    zero_init_residual: bool = False,
) -> nn.Module:
    """Build a network by name, e.g. ``create_model("resnet50")`` or ``create_model("cifar_plain56")``.

    ``num_classes`` defaults to 1000 (ImageNet) or 10 (CIFAR). ``shortcut`` defaults to B (ImageNet) or A (CIFAR)
    and is ignored by plain nets. ``variant`` applies to ImageNet bottlenecks only.
    """
    spec = parse_model_name(name)
    shortcut = (shortcut or spec.default_shortcut).upper()
    if shortcut not in SHORTCUTS:
        raise UsageError(f"unknown shortcut option {shortcut!r}; choose one of {', '.join(SHORTCUTS)}")
    if variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    residual = spec.arch == "resnet"
    if spec.family == "cifar":
        return CifarResNet(
            (spec.depth - 2) // 6,
            num_classes=num_classes or 10,
            residual=residual,
            shortcut=shortcut,
            zero_init_residual=zero_init_residual,
        )
    block, layers = IMAGENET_LAYERS[spec.depth]
    return ResNet(
        block,
        layers,
        num_classes=num_classes or 1000,
        residual=residual,
        shortcut=shortcut,
        variant=variant,
        zero_init_residual=zero_init_residual,
    )
