"""Model names -> networks: ``resnet18 ... resnet152``, ``plain18 ... plain152``, ``cifar_resnet20``, ``cifar_plain56`` ..."""

from __future__ import annotations

from torch import nn

from .errors import UsageError
from .models import SHORTCUTS, VARIANTS, BasicBlock, Bottleneck, CifarResNet, ResNet
from .names import CIFAR_DEPTHS, IMAGENET_STAGES, ModelSpec, list_models, parse_model_name

__all__ = ["CIFAR_DEPTHS", "IMAGENET_LAYERS", "ModelSpec", "create_model", "list_models", "parse_model_name"]

# Table 1 of the paper: block type and blocks per stage for each ImageNet depth.
IMAGENET_LAYERS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    depth: (BasicBlock if depth < 50 else Bottleneck, stages) for depth, stages in IMAGENET_STAGES.items()
}


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
