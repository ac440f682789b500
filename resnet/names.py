"""Model names of the paper and what they mean, without torch: ``resnet50`` -> family, arch, depth.

``resnet.registry`` builds the networks; this module only parses and lists names, so the model card (and a
torch-free server) can use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError

SHORTCUTS = ("A", "B", "C")
VARIANTS = ("v1", "v1.5")
# Blocks per stage for each ImageNet depth (Table 1 of the paper); the block type lives in resnet.registry.
IMAGENET_STAGES: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
# Section 4.2: the CIFAR depths the paper reports (any 6n+2 works).
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)

# Our networks whose state dict is torchvision's key for key (v1.5, shortcut B): the ones named weights fit.
WEIGHTS_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TORCHVISION_PREFIX = "torchvision:"
DEFAULT_WEIGHTS = "DEFAULT"

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
    if family == "imagenet" and depth not in IMAGENET_STAGES:
        raise UsageError(f"unknown architecture {name!r}: ImageNet depths are {', '.join(map(str, IMAGENET_STAGES))}")
    if family == "cifar" and (depth < 8 or (depth - 2) % 6):
        raise UsageError(f"unknown architecture {name!r}: CIFAR depths are 6n+2 with n >= 1 (20, 32, 44, 56, 110 ...)")
    return ModelSpec(family, m["arch"], depth)


def list_models() -> list[str]:
    """The named networks of the paper (CIFAR nets accept any other 6n+2 depth too)."""
    names = [f"{arch}{d}" for arch in ("resnet", "plain") for d in IMAGENET_STAGES]
    names += [f"cifar_{arch}{d}" for arch in ("resnet", "plain") for d in CIFAR_DEPTHS]
    return names


def is_torchvision_spec(model: str) -> bool:
    """Whether a serve ``--model`` value is a ``torchvision:ARCH[:WEIGHTS]`` spec rather than a path."""
    return str(model).strip().lower().startswith(TORCHVISION_PREFIX)


def parse_torchvision_spec(model: str) -> tuple[str, str]:
    """``torchvision:resnet50[:IMAGENET1K_V2]`` -> ``("resnet50", "IMAGENET1K_V2")``; weights default to ``DEFAULT``.

    Only the form and the architecture are checked here (torch-free); the weights name is resolved when loading.
    """
    parts = str(model).strip()[len(TORCHVISION_PREFIX) :].split(":")
    if len(parts) > 2 or not parts[0] or (len(parts) == 2 and not parts[1]):
        raise UsageError(f"--model {model!r}: expected torchvision:ARCH or torchvision:ARCH:WEIGHTS")
    arch = parse_model_name(parts[0]).name
    if arch not in WEIGHTS_ARCHS:
        raise UsageError(
            f"--model {model!r}: named weights exist only for the ImageNet residual nets {', '.join(WEIGHTS_ARCHS)}"
        )
    return arch, parts[1] if len(parts) == 2 else DEFAULT_WEIGHTS
