"""Where export artifacts go and how they are written: temp file + fsync + rename, so nothing is ever half-written.

Layout beside the checkpoint (or in ``-o DIR``): ``model.pt`` -> ``model.onnx``, ``model.fp16.onnx``, ``model.plan``
(+ ``model.plan.json`` sidecar); each candidate's gate report is ``<artifact>.parity.json``
(``model.onnx.parity.json`` ...). A candidate is written to a hidden staging file, gated there, then either
published under its final name or, when its gate fails, moved to ``<artifact>.rejected`` (and any older artifact
of that name is removed), so a server never finds an ungated or failed artifact under a good-looking name.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet import UserError
from resnet.atomic import atomic_write, default_file_mode, fsync_dir

REJECTED_SUFFIX = ".rejected"


@dataclass(frozen=True)
class Layout:
    """The artifact paths for one checkpoint."""

    folder: Path
    stem: str

    @property
    def onnx(self) -> Path:
        return self.folder / f"{self.stem}.onnx"

    @property
    def fp16(self) -> Path:
        return self.folder / f"{self.stem}.fp16.onnx"

    @property
    def plan(self) -> Path:
        return self.folder / f"{self.stem}.plan"

    @property
    def plan_sidecar(self) -> Path:
        return sidecar_path(self.plan)

    @property
    def timing_cache(self) -> Path:
        return self.folder / f"{self.stem}.timing.cache"


def layout_for(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Layout:
    """Artifact paths for ``checkpoint``: beside it, or in ``out_dir`` (created, and checked writable)."""
    checkpoint = Path(checkpoint)
    folder = Path(out_dir) if out_dir is not None else checkpoint.parent
    ensure_writable(folder)
    return Layout(folder, checkpoint.stem)


def report_path(artifact: str | os.PathLike[str]) -> Path:
    """The parity report of an artifact: ``model.fp16.onnx`` -> ``model.fp16.onnx.parity.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".parity.json")


def sidecar_path(plan: str | os.PathLike[str]) -> Path:
    """The engine's sidecar: ``model.plan`` -> ``model.plan.json``."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def rejected_path(artifact: str | os.PathLike[str]) -> Path:
    """Where a candidate that failed its gate is kept for inspection: ``model.onnx`` -> ``model.onnx.rejected``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + REJECTED_SUFFIX)


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` if needed and check a file can be written there; ``UserError`` (one line) otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to output folder {folder}: {e.strerror or e}") from None


def staging_path(final: str | os.PathLike[str]) -> Path:
    """A fresh hidden temp path in the final file's folder (same file system, so the rename is atomic)."""
    final = Path(final)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as e:
        raise UserError(f"cannot write to {final.parent}: {e.strerror or e}") from None
    os.close(fd)
    os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; artifacts get the usual permissions
    return Path(tmp)


def write_bytes_to(path: Path, data: bytes) -> None:
    """Write and fsync ``data`` to ``path`` (a staging file); the caller renames it into place."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        path.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def publish(staged: Path, final: Path) -> Path:
    """Move a gated staging file to its final name (atomic); drops any stale ``.rejected`` of that name."""
    os.replace(staged, final)
    fsync_dir(final.parent)
    rejected_path(final).unlink(missing_ok=True)
    return final


def reject(staged: Path, final: Path) -> Path:
    """A candidate failed its gate: keep it as ``<final>.rejected`` and remove any older artifact at ``final``."""
    target = rejected_path(final)
    os.replace(staged, target)
    Path(final).unlink(missing_ok=True)
    fsync_dir(target.parent)
    return target
