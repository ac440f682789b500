"""Named torchvision weights without a network: a real random-init state dict under the file name torch.hub caches.

Such a file cannot carry the SHA-256 prefix its name promises, so loading it needs ``check_hash=False``
(``--no-check-hash``). The fixtures ``torch_home`` and ``cached_r18`` (tests/conftest.py) build on these.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

R18_FILE = "resnet18-f37072fd.pth"  # what torch.hub caches ResNet18_Weights.IMAGENET1K_V1 under


def write_fake_r18(torch_home: Path, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """A real resnet18 state dict (random init, ``seed``) at ``torch_home/hub/checkpoints/resnet18-f37072fd.pth``."""
    torch.manual_seed(seed)
    state_dict = torchvision.models.resnet18().state_dict()
    path = torch_home / "hub" / "checkpoints" / R18_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, path)
    return path, state_dict
