"""Named torchvision weights (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``) -> our network and its card.

torchvision's weights API names the file, its URL, the labels, the resize/crop sizes and the published accuracy;
the file itself lives in the torch hub cache (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/
checkpoints``). We look in that folder ourselves before anything else: nothing is downloaded unless the caller asks
(``download=True``), so an offline machine gets one clear line at once, never a hang.

Hashes: torchvision's file names carry the first hex digits of the file's SHA-256 (``resnet50-11ad3fa6.pth``).
``torch.hub.load_state_dict_from_url(check_hash=True)`` checks them only while downloading, never for a file already
in the cache; here ``check_hash=True`` (the default) checks the cached file too, and a download is checked by
``torch.hub.download_url_to_file``. ``check_hash=False`` skips the check and says so in the card's provenance.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .card import ModelCard, make_card
from .checkpoint import load_checkpoint, load_state_dict_strict, read_checkpoint_file
from .errors import CheckpointError, MissingComponentError, UsageError
from .names import WEIGHTS_ARCHS
from .registry import create_model, parse_model_name

SOURCE_HELP = "our checkpoint (*.pt), a torchvision state dict with --arch, or an architecture name with --weights"
DOWNLOAD_TIMEOUT_S = 30.0
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")


class WeightsNotCachedError(MissingComponentError):
    """The named weights are not in the torch hub cache and no download was asked for (exit code 4)."""


def weights_enum(arch: str) -> Any:
    """torchvision's weights enum of one of ``WEIGHTS_ARCHS`` (e.g. ``ResNet50_Weights``); ``UsageError`` otherwise."""
    spec = parse_model_name(arch)
    if spec.name not in WEIGHTS_ARCHS:
        raise UsageError(
            f"named weights exist only for the ImageNet residual nets {', '.join(WEIGHTS_ARCHS)}, not {spec.name}"
        )
    from torchvision.models import get_model_weights

    return get_model_weights(spec.name)


def resolve_weights(arch: str, name: str) -> Any:
    """The torchvision weights member named ``name`` (``IMAGENET1K_V2``, ``DEFAULT``, or ``ResNet50_Weights.X``)."""
    enum = weights_enum(arch)
    short = name.strip().split(".")[-1].upper()
    if "." in name and name.split(".")[0] != enum.__name__:
        raise UsageError(f"weights {name} are not {arch}'s ({enum.__name__})")
    if short == "DEFAULT":
        return enum.DEFAULT
    if short not in enum.__members__:
        known = ", ".join([*enum.__members__, "DEFAULT"])
        raise UsageError(f"{arch} has no weights named {name!r} (known: {known})")
    return enum[short]


def full_name(weights: Any) -> str:
    """``ResNet50_Weights.IMAGENET1K_V2``: the name torchvision's ``get_weight`` takes."""
    return f"{type(weights).__name__}.{weights.name}"


def cache_path(weights: Any) -> Path:
    """Where ``torch.hub`` keeps the weights' file: ``torch.hub.get_dir()/checkpoints/<file name of the URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(weights: Any, path: Path, timeout_s: float) -> None:
    """``torch.hub.download_url_to_file`` with its hash check, every socket operation bounded by ``timeout_s``."""
    match = _HASH_IN_NAME.search(path.name)
    old = socket.getdefaulttimeout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        socket.setdefaulttimeout(timeout_s)
        torch.hub.download_url_to_file(weights.url, str(path), match.group(1) if match else None, progress=True)
    except RuntimeError as e:  # torch.hub's "invalid hash value"; the partial file is already removed
        raise CheckpointError(f"download of {weights.url} failed its check: {e}") from None
    except OSError as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsNotCachedError(
            f"could not download {weights.url} ({reason}); put {path.name} in {path.parent} by hand"
        ) from None
    finally:
        socket.setdefaulttimeout(old)


def fetch_weights_file(weights: Any, *, download: bool = False, check_hash: bool = True) -> tuple[Path, str | None]:
    """``(path, sha256 or None)`` of the weights' file in the hub cache, downloading it only when ``download``.

    Missing and not downloading: ``WeightsNotCachedError`` naming the file, its URL and the folder to put it in.
    ``check_hash``: the file's SHA-256 must start with the hex digits in its name (``CheckpointError`` otherwise).
    """
    path = cache_path(weights)
    if not path.is_file():
        if not download:
            raise WeightsNotCachedError(
                f"weights {full_name(weights)} are not in the torch hub cache: put {path.name} "
                f"(from {weights.url}) in {path.parent}, or pass --download on a machine with internet"
            )
        _download(weights, path, DOWNLOAD_TIMEOUT_S)
    if not check_hash:
        return path, None
    sha256 = file_sha256(path)
    match = _HASH_IN_NAME.search(path.name)
    if match and not sha256.startswith(match.group(1)):
        raise CheckpointError(
            f"{path} has SHA-256 {sha256[:16]}..., not the {match.group(1)} its name promises: "
            "a corrupt or different file; delete it and fetch it again"
        )
    return path, sha256


def weights_card(arch: str, weights: Any, **provenance: Any) -> ModelCard:
    """The card of ``arch`` with ``weights``: labels, resize/crop size and mean/std from torchvision's metadata and
    transforms (V2 resizes to 232, not 256); provenance names the weights, URL, recipe and published accuracy."""
    preset = weights.transforms()
    interpolation = getattr(preset.interpolation, "value", str(preset.interpolation))
    if interpolation != "bilinear":
        raise UsageError(f"{full_name(weights)} expect {interpolation} resizing; our preprocessing is bilinear")
    meta = weights.meta
    published = {**meta.get("_metrics", {}), "protocol": "torchvision: center crop, single scale"}
    return make_card(
        arch,
        labels=list(meta["categories"]),
        input_size=int(preset.crop_size[0]),
        resize_size=int(preset.resize_size[0]),
        mean=list(preset.mean),
        std=list(preset.std),
        provenance={
            "source": "torchvision weights API",
            "weights": full_name(weights),
            "weights_url": weights.url,
            "published_metrics": published,
            "recipe": meta.get("recipe"),
            "dataset": "ImageNet-1K",
            **provenance,
        },
    )


def load_named(arch: str, name: str, *, download: bool = False, check_hash: bool = True) -> tuple[nn.Module, ModelCard]:
    """``(model, card)``: our ``arch`` (v1.5, shortcut B) holding torchvision's named weights, on the CPU in eval mode.

    Reads the file from the torch hub cache (``load_state_dict_from_url``'s path rule, ``weights_only=True``);
    see ``fetch_weights_file`` for ``download`` and ``check_hash``.
    """
    weights = resolve_weights(arch, name)
    card = weights_card(arch, weights)  # before reading the file: a card problem costs no I/O
    path, sha256 = fetch_weights_file(weights, download=download, check_hash=check_hash)
    state_dict = read_checkpoint_file(path)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path} is not a state dict")
    model = create_model(card.spec.name, num_classes=card.num_classes, variant="v1.5", shortcut="B")
    load_state_dict_strict(model, state_dict, f"{card.spec.name} ({full_name(weights)})")
    model.eval()
    return model, card.with_provenance(weights_file=str(path), sha256=sha256, sha256_checked=check_hash)


def add_source_arguments(parser: argparse.ArgumentParser, path: bool = True) -> None:
    """The network source every loading command takes: positional ``checkpoint`` (a file, or an architecture name
    with ``--weights``; a ``Path`` unless ``path=False``), ``--arch`` for a plain state dict, and the weights flags."""
    parser.add_argument("checkpoint", type=Path if path else str, help=SOURCE_HELP)
    parser.add_argument("--arch", default=None, help="architecture of a plain torchvision state dict, e.g. resnet50")
    add_weights_arguments(parser)


def add_weights_arguments(parser: argparse.ArgumentParser, weights_group: Any = None) -> None:
    """``--weights NAME``, ``--download`` and ``--no-check-hash``: the same three flags on every command.
    ``weights_group``: a mutually exclusive group of ``parser`` to put ``--weights`` in."""
    (weights_group or parser).add_argument(
        "--weights",
        metavar="NAME",
        default=None,
        help="build the architecture named by the positional argument with torchvision's named weights: "
        "IMAGENET1K_V1, IMAGENET1K_V2 or DEFAULT, read from the torch hub cache ($TORCH_HOME/hub/checkpoints)",
    )
    parser.add_argument("--download", action="store_true", help="with --weights: download them when not cached")
    parser.add_argument(
        "--no-check-hash",
        dest="check_hash",
        action="store_false",
        help="with --weights: skip the SHA-256 check of the cached file against the digits in its name",
    )


def _check_source(source: str, arch: str | None, weights: str | None, download: bool, check_hash: bool) -> None:
    """``UsageError`` (one line) for a combination of source, ``--arch`` and ``--weights`` flags that makes no sense."""
    if weights:
        if arch is not None:
            raise UsageError("--arch names the network of a state-dict file; with --weights name it instead of a file")
        try:
            parse_model_name(source)
        except UsageError:
            if Path(source).is_file():
                raise UsageError(
                    f"--weights builds a network by name (e.g. resnet50), but {source} is a file: drop --weights"
                ) from None
            raise
        return
    if download or not check_hash:
        raise UsageError("--download and --no-check-hash go with --weights NAME")
    if Path(source).exists():
        return
    try:
        name = parse_model_name(source).name
    except UsageError:
        return  # not a name either: loading says the file is missing
    if name in WEIGHTS_ARCHS:
        raise UsageError(f"{source} is an architecture name, not a file: add --weights NAME (IMAGENET1K_V1, ...)")
    raise UsageError(f"{source} is an architecture name, not a file; make one with python -m resnet.new {name} -o F")


def load_model_source(
    source: str | Path,
    arch: str | None = None,
    weights: str | None = None,
    *,
    download: bool = False,
    check_hash: bool = True,
) -> tuple[nn.Module, ModelCard]:
    """``(model, card)`` from what a command line names: a checkpoint path (``arch``: a plain torchvision state
    dict's network), or an architecture name with ``weights`` (torchvision's named weights, see ``load_named``).

    Combinations that make no sense (``weights`` with a file, ``arch`` with ``weights``, ``download`` or
    ``check_hash=False`` without ``weights``, a bare architecture name) are one-line ``UsageError``s.
    """
    source = str(source)
    _check_source(source, arch, weights, download, check_hash)
    if weights:
        return load_named(source, weights, download=download, check_hash=check_hash)
    return load_checkpoint(source, arch=arch)


def source_base(source: str | Path, weights: str | None = None) -> Path:
    """The path whose ``artifacts.layout_for`` names default outputs: the checkpoint itself, or for an architecture
    name with ``weights`` the name in the current folder (``resnet50`` -> ``./resnet50.onnx``)."""
    if weights:
        try:
            return Path(parse_model_name(str(source)).name)
        except UsageError:
            pass  # not a name: load_model_source says why
    return Path(source)
