"""``python -m train.analyze responses CHECKPOINT... -o responses.png``: the paper's Fig. 7.

Standard deviation of each 3x3 layer's response — the output of the BN that follows each 3x3 convolution, before
the addition and the ReLU — collected with forward hooks on held-out images, plotted in layer order and sorted by
magnitude. The paper's finding: residual functions have smaller responses than plain layers, and deeper ResNets
smaller ones still.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import resnet
from resnet import UserError
from resnet.atomic import atomic_write
from resnet.card import ModelCard
from resnet.models import BasicBlock, Bottleneck

from .cli import _Parser


def response_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BN modules that directly follow a 3x3 convolution, in forward order."""
    layers: list[tuple[str, nn.Module]] = []
    if isinstance(getattr(model, "conv1", None), nn.Conv2d) and model.conv1.kernel_size == (3, 3):
        layers.append(("bn1", model.bn1))  # the CIFAR nets' 3x3 stem
    for name, m in model.named_modules():
        if isinstance(m, BasicBlock):
            layers += [(f"{name}.bn1", m.bn1), (f"{name}.bn2", m.bn2)]
        elif isinstance(m, Bottleneck):
            layers.append((f"{name}.bn2", m.bn2))
    return layers


@torch.no_grad()
def layer_response_stds(model: nn.Module, images: torch.Tensor, batch: int = 100) -> list[tuple[str, float]]:
    """Std of each 3x3 layer's response: per-channel std over images and positions, averaged over channels."""
    model.eval()
    layers = response_layers(model)
    sums: dict[str, list[torch.Tensor]] = {n: [] for n, _ in layers}

    def hook(name: str):
        def fn(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            sums[name].append(out.detach().transpose(0, 1).reshape(out.shape[1], -1).double())

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    try:
        for i in range(0, len(images), batch):
            model(images[i : i + batch])
    finally:
        for h in handles:
            h.remove()
    return [(n, float(torch.cat(sums[n], dim=1).std(dim=1).mean())) for n, _ in layers]


def load_images(card: ModelCard, data: str | None, limit: int) -> torch.Tensor:
    """Centre-cropped, normalised held-out images (shared preprocessing): digits test split or an ImageFolder."""
    from PIL import Image

    if data is None:
        from resnet.samples import digits_images

        x, _ = digits_images("test")
        sources: list[Any] = [Image.fromarray(a) for a in x[:limit]]
    else:
        root = Path(data)
        exts = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
        sources = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts)[:limit]
        if not sources:
            raise UserError(f"no images under {root}")
    return torch.from_numpy(np.concatenate([resnet.preprocess(s, card, crops="center") for s in sources]))


def plot_responses(results: list[tuple[str, list[tuple[str, float]]]], output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), dpi=100)
    for i, (label, stds) in enumerate(results):
        values = [s for _, s in stds]
        style = "--" if label.lower().startswith("plain") else "-"
        top.plot(range(1, len(values) + 1), values, style, color=f"C{i % 10}", lw=1.2, label=label)
        bottom.plot(range(1, len(values) + 1), sorted(values, reverse=True), style, color=f"C{i % 10}", lw=1.2)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
    top.legend(fontsize=8)
    top.set_title("Std of 3x3 layer responses (after BN, before addition/ReLU)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write(output, buf.getvalue())


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m train.analyze", description="The paper's analyses of trained networks.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser(
        "responses",
        help="Fig. 7: std of each 3x3 layer's response, plain vs residual",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument("checkpoints", nargs="+", help="model checkpoints (with cards) to compare")
    r.add_argument("-o", "--output", default="responses.png", help="PNG file to write")
    r.add_argument("--labels", default=None, help="comma-separated legend labels (default: card names)")
    r.add_argument("--data", default=None, help="folder of images (default: the held-out digits test split)")
    r.add_argument("--images", type=int, default=200, help="how many images to run through the networks")
    r.add_argument("--json", dest="json_out", default=None, help="also write the numbers to this JSON file")
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    if labels is not None and len(labels) != len(args.checkpoints):
        raise UserError(f"{len(labels)} labels for {len(args.checkpoints)} checkpoints")
    results = []
    for i, path in enumerate(args.checkpoints):
        model, card = resnet.load_checkpoint(path)
        images = load_images(card, args.data, args.images)
        stds = layer_response_stds(model, images)
        label = labels[i] if labels else f"{card.arch}-{card.depth}"
        results.append((label, stds))
        values = np.array([s for _, s in stds])
        print(
            f"{label}: {len(values)} 3x3 layers, response std mean {values.mean():.3f} "
            f"(first half {values[: len(values) // 2].mean():.3f}, last half {values[len(values) // 2 :].mean():.3f})"
        )
    out = plot_responses(results, Path(args.output))
    print(f"wrote {out}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({lab: dict(s) for lab, s in results}, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Analyse; one-line errors with the exit codes of docs/DESIGN.md §5."""
    return resnet.run_cli(_main, argv, prog="train.analyze")


if __name__ == "__main__":
    raise SystemExit(main())
