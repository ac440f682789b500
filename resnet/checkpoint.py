"""Checkpoint I/O (docs/DESIGN.md §2): atomic writes, ``weights_only`` loads, clear errors, torchvision state dicts."""

from __future__ import annotations

import builtins
import importlib.util
import os
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import digest
from .atomic import atomic_write
from .card import ModelCard, make_card
from .errors import CardError, CheckpointError, UsageError
from .registry import create_model, parse_model_name

FORMAT = "resnet-checkpoint"
VERSION = 1
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
ZIP_END = b"PK\x05\x06"  # a zip's end-of-central-directory record: within the last 64 KiB + 22 bytes
LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)  # older torch.save pickles open with this
_GLOBAL_NAME = re.compile(r"GLOBAL (\S+) was not an allowed global|unsupported GLOBAL (\S+) whose module")
_CUT_SHORT = ("central directory", "negative seek", "unpack requires a buffer", "data was truncated", "unexpected EOF")
_IDENTIFIER_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename: a reader never sees half a file."""
    return atomic_write(path, lambda f: torch.save(obj, f), error=CheckpointError)


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, card: ModelCard) -> Path:
    """Write ``{"format", "version", "model_card", "state_dict", "weights_sha256", "card_sha256"}`` atomically;
    tensors are moved to the CPU. Both digests (``state_dict_sha256``, ``digest.card_sha256``) are checked by every
    load."""
    if not isinstance(card, ModelCard):
        raise TypeError(f"save_checkpoint needs a ModelCard, not {type(card).__name__}")
    model = unwrap(model)
    state_dict = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    obj = {"format": FORMAT, "version": VERSION, "model_card": card.to_dict(), "state_dict": state_dict}
    obj[digest.DIGEST_KEY] = state_dict_sha256(state_dict)
    obj[digest.CARD_DIGEST_KEY] = digest.card_sha256(card.to_json())
    return atomic_save(obj, path)


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every tensor's name, dtype, shape and bytes, in key order (``resnet.digest``)."""
    h = digest.TensorDigest()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous().reshape(-1)
        h.add(name, str(t.dtype), tuple(state_dict[name].shape), t.view(torch.uint8).numpy())
    return h.hexdigest()


def read_checkpoint_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` with every failure turned into a one-line ``CheckpointError``.

    The message says what was wrong: not a checkpoint at all, truncated, refused because it needs code execution,
    or corrupt. Library warnings (e.g. "Detected pickle protocol N") are not shown.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such file: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    _check_container(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # untrusted bytes: torch raises anything (KeyError, IndexError, ValueError, ...)
            raise CheckpointError(f"{path} {_load_failure(e)}") from None


def _check_container(path: Path) -> None:
    """Refuse, before unpickling, a file that is neither of torch.save's two formats, or a zip cut short."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(len(LEGACY_MAGIC))
            f.seek(max(0, size - (1 << 16) - 22))
            tail = f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    if head.startswith(ZIP_MAGIC):
        if ZIP_END not in tail:
            raise CheckpointError(f"{path} is truncated: its zip archive has no end record ({size} bytes)")
    elif len(head) < len(LEGACY_MAGIC) and (LEGACY_MAGIC.startswith(head) or ZIP_MAGIC.startswith(head)):
        raise CheckpointError(f"{path} is truncated ({size} bytes)")
    elif not head.startswith(LEGACY_MAGIC):
        raise CheckpointError(
            f"{path} is not a checkpoint: it is neither a PyTorch zip archive nor a PyTorch pickle "
            f"(it starts with {head[:8]!r})"
        )


def _is_real_global(name: str) -> bool:
    """Whether a refused global is something Python could run (``posix.system``), not bytes damaged into a name.

    Nothing is imported: a name is looked up in modules already loaded, else its top-level package must exist.
    """
    if not _IDENTIFIER_PATH.fullmatch(name):
        return False
    parts = name.split(".")
    if len(parts) == 1:
        return hasattr(builtins, name)
    for i in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None:
            obj: Any = module
            for attr in parts[i:]:
                obj = getattr(obj, attr, _MISSING)
                if obj is _MISSING:
                    return False
            return True
    try:
        return importlib.util.find_spec(parts[0]) is not None  # a top-level name: finding it runs no code
    except (ImportError, ValueError):
        return False


_MISSING = object()


def _load_failure(e: Exception) -> str:
    """What was wrong, in words, from the exception ``torch.load`` raised."""
    text = str(e)
    found = _GLOBAL_NAME.search(text)
    name = (found.group(1) or found.group(2)) if found else None
    if name and _is_real_global(name):
        return (
            f"refused: it needs code execution to load (it names {name[:80]}; only tensors, numbers, strings, "
            "lists and dicts load with weights_only=True)"
        )
    if isinstance(e, EOFError) or any(s in text for s in _CUT_SHORT):
        return "is truncated"
    if "WeightsUnpickler error:" in text:  # torch wraps the unpickler's own message in paragraphs of advice
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif text.startswith("Weights only load failed") and "\n\n" in text:
        text = text.split("\n\n", 1)[1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"is corrupt ({type(e).__name__}{': ' + first[:100] if first else ''})"


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Load a state dict, naming missing, unexpected and mis-shaped keys in one clear ``CheckpointError``."""
    if not _is_state_dict(state_dict):
        raise CheckpointError(f"state dict for {what} is not a mapping of names to tensors")
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    dtypes = [
        f"{k} {state_dict[k].dtype} vs {v.dtype}"
        for k, v in own.items()
        if k in state_dict
        and (state_dict[k].is_complex() or state_dict[k].is_floating_point() != v.is_floating_point())
    ]
    if missing or unexpected or shapes or dtypes:

        def head(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch: {head(shapes)}")
        if dtypes:
            parts.append(f"dtype mismatch: {head(dtypes)}")
        raise CheckpointError(f"state dict does not match {what}: " + "; ".join(parts))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # e.g. a tensor of a dtype that cannot be copied into the weights
        raise CheckpointError(f"state dict does not fit {what} ({str(e).strip().splitlines()[-1][:100]})") from None


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers, in any order."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        inner = inner if isinstance(inner, nn.Module) else getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def model_from_card(card: ModelCard) -> nn.Module:
    """An untrained network of the architecture a card describes."""
    return create_model(card.spec.name, num_classes=card.num_classes, variant=card.variant, shortcut=card.shortcut)


def _is_ours(obj: Any) -> bool:
    """Whether an unpickled object says it is our checkpoint (``format`` is the string, not a look-alike tensor)."""
    return isinstance(obj, dict) and isinstance(obj.get("format"), str) and obj["format"] == FORMAT


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is plain JSON data (what a card holds): a tensor in a card would fail far from here."""
    if depth > 64:
        return False
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _header(obj: dict[str, Any], path: str | os.PathLike[str]) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """The validated card and state dict of our checkpoint, its card and weights checked against ``card_sha256`` and
    ``weights_sha256``.

    Every header field is checked for its type before it is compared: a damaged file may hold a tensor (of any
    number of elements) where a number or a string belongs, and comparing that raises ``RuntimeError``."""
    version = obj.get("version")
    if type(version) is not int or version != VERSION:
        shown = f"a {type(version).__name__}" if isinstance(version, torch.Tensor) else repr(version)[:20]
        raise CheckpointError(f"{path}: checkpoint version {shown} is not supported (need {VERSION})")
    raw_card = obj.get("model_card")
    if not _plain(raw_card):
        raise CheckpointError(f"{path}: its model card holds something other than JSON data (a damaged file)")
    card_recorded = digest.recorded(obj.get(digest.CARD_DIGEST_KEY), path, "model card")
    try:
        card_actual = digest.card_sha256(digest.card_json(raw_card)) if card_recorded else ""
    except (ValueError, TypeError, RecursionError):  # not what to_json wrote: cannot match
        card_actual = "0" * 64
    digest.check(path, card_recorded, card_actual, what="model card")
    try:
        card = ModelCard.from_dict(raw_card)
    except CardError as e:
        raise CardError(f"{path}: {e}") from None
    state_dict = obj.get("state_dict")
    if not _is_state_dict(state_dict):
        raise CheckpointError(f"{path} has no usable state_dict")
    recorded = digest.recorded(obj.get(digest.DIGEST_KEY), path)
    try:
        actual = state_dict_sha256(state_dict) if recorded else ""
    except (RuntimeError, TypeError) as e:  # a tensor kind that has no plain bytes (quantized, sparse, ...)
        raise CheckpointError(f"{path}: its state_dict holds a tensor that cannot be read ({str(e)[:80]})") from None
    digest.check(path, recorded, actual)
    return card, state_dict


def read_checkpoint_card(path: str | os.PathLike[str]) -> ModelCard:
    """The card of one of our checkpoints (no network is built); its weights are checked against their digest."""
    obj = read_checkpoint_file(path)
    if not _is_ours(obj):
        raise CheckpointError(f"{path} is not a resnet checkpoint with a model card")
    return _header(obj, path)[0]


def load_checkpoint(path: str | os.PathLike[str], arch: str | None = None) -> tuple[nn.Module, ModelCard]:
    """Load ``(model, card)`` from our checkpoint, or from a plain torchvision state dict when ``arch`` is given.

    The model is on the CPU in eval mode. Errors are ``CheckpointError``/``UsageError`` with one clear line.
    """
    obj = read_checkpoint_file(path)
    if _is_ours(obj):
        card, state_dict = _header(obj, path)
        if arch is not None and parse_model_name(arch).name != card.spec.name:
            raise UsageError(f"{path} holds a {card.spec.name}, not the {arch} you named")
        model = model_from_card(card)
        load_state_dict_strict(model, state_dict, card.spec.name)
    elif _is_state_dict(obj) or (isinstance(obj, dict) and _is_state_dict(obj.get("state_dict"))):
        state_dict = obj if _is_state_dict(obj) else obj["state_dict"]
        if arch is None:
            raise UsageError(
                f"{path} is a plain state dict with no model card; name its architecture (--arch resnet50)"
            )
        spec = parse_model_name(arch)
        fc = state_dict.get("fc.weight")
        num_classes = fc.shape[0] if fc is not None and fc.dim() == 2 and fc.shape[0] > 0 else None
        card = make_card(
            spec.name, num_classes=num_classes, provenance={"source": str(path), "format": "torchvision state dict"}
        )
        model = model_from_card(card)
        load_state_dict_strict(model, state_dict, spec.name)
    else:
        raise CheckpointError(f"{path} is not a resnet checkpoint or a state dict")
    model.eval()
    return model, card
