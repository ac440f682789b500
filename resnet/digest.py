"""Weight and card digests (docs/DESIGN.md §2): SHA-256s every artifact carries of what it computes with and of the
card that says how to feed it, checked at load.

torch does not check its archive's CRCs and protobuf has no checksum, so a bit flipped in a checkpoint's or an ONNX
graph's weights would load and serve wrong answers silently. Each writer records a digest; each reader recomputes it:

- checkpoint: ``weights_sha256`` in the checkpoint header, over the state dict (``resnet.checkpoint``);
- ONNX graph: ``metadata_props["weights_sha256"]`` beside the card, over the serialised graph (``resnet.onnx_card``);
- engine: ``plan_sha256`` in the sidecar, over the ``.plan`` file's bytes (``resnet.artifacts``);
- the card, in all three: ``card_sha256`` beside ``weights_sha256`` (ONNX ``metadata_props``, the sidecar), over the
  card's compact JSON as written (``ModelCard.to_json()``: labels, sizes, mean/std, name, metrics, provenance), so
  a flipped byte in a label or in the mean is refused like one in the weights.

A mismatch is a ``CheckpointError`` naming the file (exit 1). An artifact written before a digest was recorded has
none: it loads, and ``check`` says so in one log line. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from .errors import CheckpointError

DIGEST_KEY = "weights_sha256"
CARD_DIGEST_KEY = "card_sha256"
_HEX = re.compile(r"[0-9a-f]{64}")
log = logging.getLogger("resnet.digest")


class TensorDigest:
    """SHA-256 over named tensors: each as its name, dtype, shape and raw bytes, framed so that no two different
    sequences of tensors give the same stream of bytes."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, name: str, dtype: str, shape: tuple[int, ...], data: Any) -> None:
        view = memoryview(data).cast("B")
        head = f"{name}\0{dtype}\0{','.join(map(str, shape))}\0{view.nbytes}\0".encode()
        self._h.update(len(head).to_bytes(8, "little") + head)
        self._h.update(view)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes in memory (an engine's ``.plan`` before it is written)."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def card_sha256(card_json: str | bytes) -> str:
    """Hex SHA-256 of a card's compact JSON as written (``ModelCard.to_json()``, UTF-8)."""
    return bytes_sha256(card_json.encode() if isinstance(card_json, str) else bytes(card_json))


def card_json(raw: Any) -> str:
    """A card object as read back (checkpoint, sidecar) as the compact JSON ``ModelCard.to_json()`` wrote."""
    return json.dumps(raw, separators=(",", ":"))


def recorded(value: object, path: str | os.PathLike[str], what: str = "weights") -> str | None:
    """The digest an artifact recorded: None when it has none, ``CheckpointError`` when it is not a SHA-256."""
    if value is None:
        return None
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise CheckpointError(f"{path} is corrupt: its recorded {what} digest is not a SHA-256 ({str(value)[:20]!r})")
    return value


def check(path: str | os.PathLike[str], expected: str | None, actual: str, what: str = "weights") -> None:
    """Refuse ``path`` when its ``what`` hash differently from what was recorded; log an unchecked old artifact."""
    if expected is None:
        log.warning("%s carries no %s digest (written before digests were recorded): loaded unchecked", path, what)
        return
    if actual != expected:
        raise CheckpointError(
            f"{Path(path)} is corrupt: the sha256 of its {what} is {actual[:16]}..., not the {expected[:16]}... "
            "recorded when it was written (copy or export it again)"
        )
