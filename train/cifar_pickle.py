"""Read the standard ``cifar-10-batches-py`` batches without running code from the file.

The CIFAR-10 "python version" batches ARE pickles (written by Python 2's cPickle). ``pickle.load`` on a downloaded
file would execute any callable the file names (``os.system`` ...), so we parse them with a restricted Unpickler
whose ``find_class`` only admits what a numpy array needs to be rebuilt: ``numpy.core.multiarray._reconstruct``
(``numpy._core`` in NumPy 2), ``numpy.ndarray`` and ``numpy.dtype``. Dicts, lists, bytes, str and ints need no
class look-up. Everything else is refused with ``UnsafePickleError``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from resnet import UserError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3's protocol 2 spells a bytes literal; a pure str -> bytes function
}


class UnsafePickleError(UserError):
    """A CIFAR batch file that asks to construct something other than plain data and numpy arrays."""


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refused to load {module}.{name}: CIFAR batches hold only data and numpy arrays")


def load_batch(path: str | Path) -> dict[str, Any]:
    """One CIFAR-10 batch -> ``{"data": uint8 [N, 3, 32, 32], "labels": int64 [N], "batch_label", "filenames"}``."""
    path = Path(path)
    try:
        raw = _DataOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise UserError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict) or b"data" not in raw or b"labels" not in raw:
        raise UserError(f"{path} is not a CIFAR-10 python batch (no b'data'/b'labels')")
    data, labels = raw[b"data"], raw[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: b'data' must be uint8 [N, 3072], got {getattr(data, 'shape', type(data))}")
    if len(labels) != len(data):
        raise UserError(f"{path}: {len(labels)} labels for {len(data)} images")
    return {
        "data": data.reshape(-1, 3, 32, 32),
        "labels": np.asarray(labels, dtype=np.int64),
        "batch_label": raw.get(b"batch_label", b"").decode("utf-8", "replace"),
        "filenames": [f.decode("utf-8", "replace") for f in raw.get(b"filenames", [])],
    }


def load_label_names(path: str | Path) -> list[str] | None:
    """``batches.meta`` -> the ten class names, or None when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        raw = _DataOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise UserError(f"{path} is not a CIFAR-10 meta file ({type(e).__name__}: {e})") from None
    names = raw.get(b"label_names") if isinstance(raw, dict) else None
    return [n.decode("utf-8", "replace") for n in names] if names else None


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
