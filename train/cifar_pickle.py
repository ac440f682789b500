"""Read the standard ``cifar-10-batches-py`` batches without running code from the file.

The CIFAR-10 "python version" batches ARE pickles (written by Python 2's cPickle). ``pickle.load`` on a downloaded
file would execute any callable the file names (``os.system`` ...), so we parse them with a restricted Unpickler
whose ``find_class`` only admits what a numpy array needs to be rebuilt: ``numpy.core.multiarray._reconstruct``
(``numpy._core`` in NumPy 2), ``numpy.ndarray`` and ``numpy.dtype``. Dicts, lists, bytes, str and ints need no
class look-up; ``_codecs.encode`` (how protocol 2 spells a bytes literal) is admitted for ``str -> latin1`` only.
Everything else is refused with ``UnsafePickleError``; any other parse failure is one ``UserError`` line.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from resnet import UserError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class UnsafePickleError(UserError):
    """A CIFAR batch file that asks to construct something other than plain data and numpy arrays."""


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it (a bytes literal), and nothing else: no other codec is reachable."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("refused _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refused to load {module}.{name}: CIFAR batches hold only data and numpy arrays")


def _unpickle(path: Path, what: str) -> Any:
    """The object in a CIFAR pickle; every failure is one ``UserError`` line, no library warnings."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _DataOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except EOFError:
        raise UserError(f"{path} is truncated: not a complete CIFAR-10 {what}") from None
    except Exception as e:  # untrusted bytes: the unpickler and numpy raise nearly anything
        msg = str(e).splitlines()[0][:80] if str(e) else ""
        if "truncated" in msg:
            raise UserError(f"{path} is truncated: not a complete CIFAR-10 {what}") from None
        raise UserError(f"{path} is not a CIFAR-10 {what} ({type(e).__name__}{': ' + msg if msg else ''})") from None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def load_batch(path: str | Path) -> dict[str, Any]:
    """One CIFAR-10 batch -> ``{"data": uint8 [N, 3, 32, 32], "labels": int64 [N], "batch_label", "filenames"}``."""
    path = Path(path)
    raw = _unpickle(path, "python batch")
    if not isinstance(raw, dict) or b"data" not in raw or b"labels" not in raw:
        raise UserError(f"{path} is not a CIFAR-10 python batch (no b'data'/b'labels')")
    data, labels = raw[b"data"], raw[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: b'data' must be uint8 [N, 3072], got {str(getattr(data, 'shape', type(data)))[:40]}")
    if not isinstance(labels, list | np.ndarray) or not all(isinstance(v, int | np.integer) for v in labels):
        raise UserError(f"{path}: b'labels' must be a list of class numbers")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(data):
        raise UserError(f"{path}: {len(labels)} labels for {len(data)} images")
    if len(labels) and labels.min() < 0:
        raise UserError(f"{path}: negative class number {labels.min()} in b'labels'")
    names = raw.get(b"filenames", [])
    return {
        "data": data.reshape(-1, 3, 32, 32),
        "labels": labels,
        "batch_label": _text(raw.get(b"batch_label", b"")),
        "filenames": [_text(f) for f in names] if isinstance(names, list) else [],
    }


def load_label_names(path: str | Path) -> list[str] | None:
    """``batches.meta`` -> the ten class names, or None when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return None
    raw = _unpickle(path, "meta file")
    names = raw.get(b"label_names") if isinstance(raw, dict) else None
    if names is not None and not (isinstance(names, list) and all(isinstance(n, bytes | str) for n in names)):
        raise UserError(f"{path}: b'label_names' must be a list of names")
    return [_text(n) for n in names] if names else None


def write_batch(path: str | Path, data: np.ndarray, labels: list[int], batch_label: str = "batch") -> Path:
    """Write a batch in the real format (protocol 2, bytes keys, uint8 [N, 3072]); for tests and tools."""
    path = Path(path)
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(len(data), 3072)
    obj = {
        b"batch_label": batch_label.encode(),
        b"labels": [int(x) for x in labels],
        b"data": data,
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(data))],
    }
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the protocol of the published files
    return path
