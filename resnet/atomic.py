"""Atomic file writes (docs/DESIGN.md §2): temp file in the same folder, fsync, rename, fsync the folder.

A reader, a server polling the folder, or a run killed mid-write never sees half a file. No torch here, so light
clients can use it too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import UserError

Payload = bytes | Callable[[BinaryIO], None]


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Persist a rename in ``folder`` (best effort: some file systems cannot fsync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def default_file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (0666 less the umask); ``mkstemp`` alone gives 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike[str], payload: Payload, error: type[UserError] = UserError) -> Path:
    """Write ``payload`` (bytes, or a function that writes into a binary file) to ``path`` atomically.

    A folder that cannot be created or written raises ``error`` with one clear line; any failure while writing
    removes the temp file and leaves an older ``path`` untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise error(f"cannot write to {path.parent}: {e.strerror or e}") from None
    try:
        os.chmod(tmp, default_file_mode())  # a server running as another user can read what we wrote
        with os.fdopen(fd, "wb") as f:
            if isinstance(payload, (bytes, bytearray, memoryview)):
                f.write(payload)
            else:
                payload(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
