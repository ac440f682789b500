"""Artifacts (docs/DESIGN.md §2): which kind a path is, where each goes, how it is written, and the engine sidecar.

The one owner of: the artifact kind from a file name (``artifact_kind``), the card of any artifact
(``read_card``), the versioned ``*.plan.json`` engine sidecar (``EngineSidecar``, ``write_sidecar``,
``read_sidecar``, ``check_engine_host``), and publishing or rejecting a gated candidate. No torch here.

Files are written through a staging file + fsync + rename, so nothing is ever half-written. Layout beside the checkpoint (or in ``-o DIR``): ``model.pt`` -> ``model.onnx``, ``model.fp16.onnx``, ``model.plan``
(+ ``model.plan.json`` sidecar); each candidate's gate report is ``<artifact>.parity.json``
(``model.onnx.parity.json`` ...). A candidate is written to a hidden staging file, gated there, then either
published under its final name or, when its gate fails, moved to ``<artifact>.rejected`` (and any older artifact
of that name is removed), so a server never finds an ungated or failed artifact under a good-looking name.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import digest
from .atomic import atomic_write, default_file_mode, fsync_dir
from .card import ModelCard
from .errors import CardError, MissingComponentError, UsageError, UserError

REJECTED_SUFFIX = ".rejected"
DEFAULT_MAX_BATCH = 64  # crops per inference batch when nothing else bounds it
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
ONNX_SUFFIXES = (".onnx",)  # also .fp16.onnx and .int8.onnx: the precision is in the card
ENGINE_SUFFIXES = (".plan", ".engine")
# The TensorRT-ready INT8 graph (symmetric int8, float biases): built into engines or run by ONNX Runtime's TensorRT
# EP; slower than FP32 in ONNX Runtime on the CPU, so never a CPU serving candidate (docs/DESIGN.md §2.3).
TENSORRT_INT8_SUFFIX = ".int8.trt.onnx"
ArtifactKind = Literal["checkpoint", "onnx", "engine"]


def is_tensorrt_graph(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the TensorRT-ready INT8 graph (``model.int8.trt.onnx``), which only TensorRT should run."""
    return Path(path).name.lower().endswith(TENSORRT_INT8_SUFFIX)


def artifact_kind(path: str | os.PathLike[str]) -> ArtifactKind:
    """``checkpoint``, ``onnx`` or ``engine`` from the file name (contents are checked when loading)."""
    name = Path(path).name.lower()
    if name.endswith(ENGINE_SUFFIXES):
        return "engine"
    if name.endswith(ONNX_SUFFIXES):
        return "onnx"
    if name.endswith(CHECKPOINT_SUFFIXES):
        return "checkpoint"
    raise UsageError(
        f"{path}: unknown artifact type (expected .plan/.engine, .onnx/.fp16.onnx/.int8.onnx or .pt/.pth/.ckpt)"
    )


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """The card of any artifact: a checkpoint's ``model_card`` (needs torch), an ONNX file's metadata, or an
    engine's sidecar. ``UserError`` subclasses with one line for a file that is missing or not ours."""
    path = Path(path)
    kind = artifact_kind(path)
    if kind == "engine":
        return read_sidecar(path).card
    if kind == "onnx":
        from .onnx_card import read_onnx_card

        return read_onnx_card(path)
    from .checkpoint import read_checkpoint_card

    return read_checkpoint_card(path)


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
    def int8(self) -> Path:
        return self.folder / f"{self.stem}.int8.onnx"

    @property
    def int8_tensorrt(self) -> Path:
        return self.folder / f"{self.stem}{TENSORRT_INT8_SUFFIX}"

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


# ---- the engine sidecar (docs/DESIGN.md §2.5) ------------------------------------------------------------------


def _check_card(data: dict[str, Any], where: str) -> None:
    """The sidecar's card against its ``card_sha256`` (``CheckpointError``); none recorded: one log line."""
    recorded = digest.recorded(data.get(digest.CARD_DIGEST_KEY), where, "model card")
    try:
        actual = digest.card_sha256(digest.card_json(data.get("card"))) if recorded else ""
    except (ValueError, TypeError, RecursionError):
        actual = "0" * 64
    digest.check(where, recorded, actual, what="model card")


SIDECAR_FORMAT = "resnet-engine"
SIDECAR_VERSION = 2


@dataclass(frozen=True)
class EngineSidecar:
    """What a ``*.plan`` cannot say about itself: its card, the TensorRT and GPU it was built for, its profiles."""

    card: ModelCard
    tensorrt: str  # TensorRT version that built it; engines do not deserialize across versions
    gpu_name: str
    compute_capability: str  # "9.0": engines are specific to the GPU architecture
    profile: dict[str, int]  # optimisation profile on the batch dimension: min, opt, max
    precision: str = "fp16"
    build: dict[str, Any] = field(default_factory=dict)  # mode, source ONNX, seconds, timing cache, CUDA
    parity: dict[str, Any] | None = None  # the gate report that admitted it
    # the multi-scale profile (profile 1): {"batch": [min, opt, max], "min_side", "max_side", "sides"}; None: none
    multiscale: dict[str, Any] | None = None
    plan_sha256: str | None = None  # SHA-256 of the .plan's bytes (resnet.digest); None: written before digests

    def to_dict(self) -> dict[str, Any]:
        extra = {"multiscale": _multiscale(self.multiscale)} if self.multiscale is not None else {}
        if self.plan_sha256 is not None:
            extra["plan_sha256"] = self.plan_sha256
        return {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "card": self.card.to_dict(),
            digest.CARD_DIGEST_KEY: digest.card_sha256(self.card.to_json()),
            "tensorrt": self.tensorrt,
            "gpu": {"name": self.gpu_name, "compute_capability": self.compute_capability},
            "profile": dict(self.profile),
            "precision": self.precision,
            "build": dict(self.build),
            "parity": self.parity,
            **extra,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "sidecar") -> EngineSidecar:
        """Validate a sidecar object; another format or version is refused (exit 4) with how to rebuild."""
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise SidecarMismatchError(f"{where} is not a {SIDECAR_FORMAT} sidecar (format {_peek(data, 'format')})")
        if data.get("version") != SIDECAR_VERSION:
            raise SidecarMismatchError(
                f"{where} is sidecar version {_peek(data, 'version')}; this release reads version {SIDECAR_VERSION}"
            )
        gpu, profile = data.get("gpu"), data.get("profile")
        _check_card(data, where)
        try:
            if not isinstance(gpu, dict) or not isinstance(profile, dict):
                raise TypeError("gpu and profile must be objects")
            parity = data.get("parity")
            return cls(
                card=ModelCard.from_dict(data.get("card")),
                tensorrt=_str(data["tensorrt"]),
                gpu_name=_str(gpu["name"]),
                compute_capability=_str(gpu["compute_capability"]),
                profile={k: _batch(profile[k]) for k in ("min", "opt", "max")},
                precision=_str(data.get("precision", "fp16")),
                build=dict(data.get("build") or {}),
                parity=parity if isinstance(parity, dict) else None,
                multiscale=_multiscale(data.get("multiscale")),
                plan_sha256=digest.recorded(data.get("plan_sha256"), where),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CardError(f"{where} is malformed ({type(e).__name__}: {str(e)[:80]})") from None


class SidecarMismatchError(MissingComponentError):
    """An engine's sidecar of another format/version, or an engine built for another TensorRT or GPU. Exit 4."""


def _peek(data: Any, key: str) -> str:
    return repr(data.get(key))[:40] if isinstance(data, dict) else f"none: a JSON {type(data).__name__}"


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {type(value).__name__}")
    return value


def _batch(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"profile batch sizes must be whole numbers >= 1, got {value!r:.20}")
    return value


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a whole number >= 1, got {value!r:.20}")
    return value


def _multiscale(value: Any) -> dict[str, Any] | None:
    """The validated ``multiscale`` object (None when absent): the engine's profile for multi-scale views."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"multiscale must be an object, not a JSON {type(value).__name__}")
    batch, sides = value["batch"], value["sides"]
    if not isinstance(batch, list) or len(batch) != 3:
        raise ValueError("multiscale batch must be [min, opt, max]")
    lo, opt, hi = (_whole(b, "multiscale batch") for b in batch)
    min_side, max_side = _whole(value["min_side"], "min_side"), _whole(value["max_side"], "max_side")
    if not lo <= opt <= hi or min_side > max_side:
        raise ValueError(f"multiscale batch {batch} or sides [{min_side}, {max_side}] out of order")
    if not isinstance(sides, list) or not sides:
        raise ValueError("multiscale sides must be a non-empty list")
    sides = [_whole(s, "multiscale side") for s in sides]
    if not all(min_side <= s <= max_side for s in sides):
        raise ValueError(f"multiscale sides {sides[:8]} outside [{min_side}, {max_side}]")
    return {"batch": [lo, opt, hi], "min_side": min_side, "max_side": max_side, "sides": sides}


def write_sidecar(plan: str | os.PathLike[str], sidecar: EngineSidecar) -> Path:
    """Write ``<plan>.json`` atomically."""
    return atomic_write_json(sidecar_path(plan), sidecar.to_dict())


def read_sidecar(plan: str | os.PathLike[str]) -> EngineSidecar:
    """The validated sidecar of an engine; one-line ``UserError`` subclasses for missing, unreadable or foreign ones.
    When the ``.plan`` is there, its bytes are checked against the sidecar's ``plan_sha256`` (``CheckpointError``)."""
    side = sidecar_path(plan)
    if not side.is_file():
        raise CardError(f"{plan} has no sidecar {side.name}: its card, TensorRT version and profile are unknown")
    try:
        data = json.loads(side.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise CardError(f"{side} is not readable JSON ({type(e).__name__})") from None
    try:
        sidecar = EngineSidecar.from_dict(data, where=str(side))
    except SidecarMismatchError as e:
        raise SidecarMismatchError(f"{e}; {rebuild_hint(plan)}") from None
    if Path(plan).is_file():
        try:
            actual = digest.file_sha256(plan) if sidecar.plan_sha256 else ""
        except OSError as e:
            raise UserError(f"cannot read {plan}: {e.strerror or e}") from None
        digest.check(plan, sidecar.plan_sha256, actual, what="engine")
    return sidecar


def rebuild_hint(plan: str | os.PathLike[str]) -> str:
    """The command that rebuilds an engine on this machine."""
    stem = Path(plan).name.rsplit(".", 1)[0]  # model.plan -> model; model.int8.plan -> model.int8
    int8 = stem.endswith(".int8")
    checkpoint = Path(plan).with_name(stem.removesuffix(".int8") + ".pt")
    return f"rebuild it here: python -m export.trt {checkpoint} --require-engine{' --int8' if int8 else ''}"


def check_engine_host(
    plan: str | os.PathLike[str], sidecar: EngineSidecar, tensorrt: str, compute_capability: str
) -> None:
    """Refuse (exit 4) an engine built by another TensorRT version or for another GPU architecture."""
    if sidecar.tensorrt != tensorrt:
        raise SidecarMismatchError(
            f"{plan} was built by TensorRT {sidecar.tensorrt}, this machine has {tensorrt}; {rebuild_hint(plan)}"
        )
    if sidecar.compute_capability != compute_capability:
        raise SidecarMismatchError(
            f"{plan} was built for compute capability {sidecar.compute_capability} ({sidecar.gpu_name}), this GPU "
            f"is {compute_capability}; {rebuild_hint(plan)}"
        )
