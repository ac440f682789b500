"""The repository folder as the server reads it: one look at every model (blocking: run it off the event loop).

Every entry is judged on its own: a model folder whose ``config.pbtxt`` does not parse, a version folder whose name
is not plain ASCII decimal, a symlink that leaves the repository, a tree too large to fingerprint: each is a reason
on that entry, never an exception that stops the look at the others.

Symlink policy: a model folder, version folder or file that is a symlink is followed only when its target stays
inside the repository folder, unless ``--follow-outside-symlinks`` (then any target is followed).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from resnet import UserError
from resnet.artifacts import artifact_kind, report_path

from ..engine.precision import gate_verdict
from .pbtxt import ModelConfig, PbtxtError, read_model_config

CONFIG_FILE = "config.pbtxt"
ARTIFACT_SUFFIXES = (".onnx", ".plan", ".engine", ".pt", ".pth", ".ckpt")
REDUCED = ("fp16", "int8")
MAX_NAME = 200  # characters of a model name (a folder name: most file systems stop at 255 bytes)
MAX_VERSION_DIGITS = 18  # a version number fits an int64, as Triton's do
MAX_FILES = 1000  # files under one version folder that are fingerprinted; more is refused, not walked
_DECIMAL = re.compile(rf"[0-9]{{1,{MAX_VERSION_DIGITS}}}")


class Refused(Exception):
    """An entry of the folder the server will not use, with the reason (one line)."""


def name_problem(name: str) -> str:
    """Why ``name`` cannot be a model name (empty when it can): a folder name, not hidden, bounded in length."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\x00" in name:
        return f"'{name[:40]}' is not a model name (a folder name, not hidden)"
    if len(name) > MAX_NAME:
        return f"a model name is at most {MAX_NAME} characters, not {len(name)}"
    return ""


def parse_version(text: str) -> int | None:
    """The version number a folder name or request names: plain ASCII decimal (``²`` is not), else None."""
    return int(text) if _DECIMAL.fullmatch(text) else None


def check_inside(path: Path, root: Path, follow_outside: bool) -> None:
    """``Refused`` when ``path`` is (or passes through) a symlink whose target leaves ``root``."""
    if follow_outside:
        return
    target = path.resolve()
    if not target.is_relative_to(root.resolve()):
        raise Refused(f"{path.relative_to(root)} is a symlink to {target}, outside the repository (refused)")


def fingerprint(folder: Path, root: Path | None = None, follow_outside: bool = True) -> tuple:
    """(name, size, mtime) of every file under ``folder``: equal twice in a row = nobody is writing it. ``Refused``
    when a file links outside ``root`` (unless ``follow_outside``) or there are more than ``MAX_FILES``."""
    rows = []
    for dirpath, dirnames, filenames in os.walk(folder):  # symlinked sub-folders are listed, not descended
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            if root is not None:
                check_inside(p, root, follow_outside)
            with contextlib.suppress(OSError):
                st = p.stat()
                rows.append((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns))
            if len(rows) > MAX_FILES:
                raise Refused(f"{folder.name}/ holds more than {MAX_FILES} files (refused)")
    return tuple(sorted(rows))


@dataclass
class ModelLook:
    """One model folder as one look found it: its config (or why not), version folders and their fingerprints
    (or why each is refused), and problems of the model as a whole (it then loads nothing new)."""

    name: str
    path: Path
    config: ModelConfig | None = None
    config_error: str = ""
    versions: dict[int, Path] = field(default_factory=dict)
    prints: dict[int, tuple] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def look_model(root: Path, name: str, follow_outside: bool, max_config_bytes: int) -> ModelLook:
    """One model folder, judged on its own (never raises for what the folder holds)."""
    mdir = root / name
    found = ModelLook(name, mdir)
    try:
        check_inside(mdir, root, follow_outside)
        try:
            found.config = read_model_config(mdir / CONFIG_FILE, max_config_bytes)
        except PbtxtError as e:
            found.config_error = f"{CONFIG_FILE} not read ({e})"
        for v in sorted(mdir.iterdir()):
            if v.name.startswith(".") or not v.is_dir():
                continue
            number = parse_version(v.name)
            if number is None:
                found.problems.append(f"version folder '{v.name[:40]}' is not a plain decimal number (ignored)")
                continue
            found.versions[number] = v
            try:
                check_inside(v, root, follow_outside)
                found.prints[number] = fingerprint(v, root, follow_outside)
            except Refused as e:
                found.refused[number] = str(e)
    except Refused as e:
        found.problems.append(str(e))
    except (OSError, ValueError, RuntimeError) as e:  # unreadable folder, odd names, symlink loops
        found.problems.append(f"cannot read the model folder: {type(e).__name__}: {e}"[:400])
    return found


def look(root: Path, only: str | None, follow_outside: bool, max_config_bytes: int) -> dict[str, ModelLook] | str:
    """Every model folder of ``root`` (or only ``only``), hidden ones skipped; the reason when ``root`` itself cannot
    be listed."""
    try:
        names = sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())
    except OSError as e:
        return f"cannot scan the model repository {root}: {e}"
    return {n: look_model(root, n, follow_outside, max_config_bytes) for n in names if only is None or n == only}


def artifacts_in(folder: Path) -> list[Path]:
    """The servable artifacts of a version folder (not reports, sidecars, rejected candidates or hidden files)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.endswith(ARTIFACT_SUFFIXES)
    )


def estimate_bytes(files: list[Path], sessions: int, overhead: int) -> int:
    """Memory a version takes once loaded: its weights (the artifact's bytes: parameters x bytes per precision,
    external data included) once per session, plus ``overhead`` per session. Every artifact of the folder counts:
    ``--precision auto`` loads each to time it."""
    weights = 0
    for f in files:
        with contextlib.suppress(OSError):
            weights += f.stat().st_size
            weights += sum(x.stat().st_size for x in f.parent.iterdir() if x.name.startswith(f.name + ".data"))
    return weights * sessions + overhead * sessions


def memory_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def gate(artifact: Path, model_dir: Path) -> str:
    """Why ``artifact`` may not be served by its parity report (empty = it may). A report beside it or (export.triton)
    beside the versions that says failed refuses it; a reduced-precision graph needs a passing one."""
    reports = [report_path(artifact), model_dir / report_path(artifact).name]
    found = next((r for r in reports if r.is_file()), None)
    kind = artifact_kind(artifact)
    if found is not None:
        return gate_verdict(found.with_name(found.name[: -len(".parity.json")]))
    if kind == "onnx":
        from resnet.onnx_card import read_onnx_card

        precision = read_onnx_card(artifact).precision  # CardError: the card does not parse (half-written, foreign)
        if precision in REDUCED:
            return f"a {precision} graph needs a passing parity report ({report_path(artifact).name}); none found"
    return ""


def version_target(folder: Path, model_dir: Path) -> Path:
    """What a version folder serves: its one artifact (gated by its parity report), or the folder when it holds
    several (``--precision`` picks). ``UserError`` with the reason it cannot be served."""
    files = artifacts_in(folder)
    if not files:
        raise UserError(f"no artifact in {folder.name}/ (expected one of {', '.join(ARTIFACT_SUFFIXES)})")
    if len(files) > 1:
        return folder
    why = gate(files[0], model_dir)
    if why:
        raise UserError(f"{files[0].name}: {why}")
    return files[0]
