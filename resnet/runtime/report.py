"""The parity report, typed: what a gate ran, on which runtime, provider and precision, and whether it passed.

The export gate writes one report per artifact and combination (``write_report``); the server reads them back
(``ParityReport.read``, ``admitting_report``) to decide what it may serve: a combination is served only with a
passing report that ran exactly that runtime + provider + precision, except the CPU ONNX Runtime combination of a
graph, which serves as it always has (its CPU gate is what admitted the file; its report is named when present).

Where reports live, beside the artifact: the artifact's own combination (ONNX Runtime on the CPU for a graph,
TensorRT for an engine) in ``<artifact>.parity.json`` (``resnet.artifacts.report_path``); any other combination in
``<artifact>.<combination slug>.parity.json``, e.g. ``model.onnx.ort-tensorrt-fp16.parity.json``.

Reports written before the runtime was recorded (format ``resnet-parity`` version 1) are read too: their candidate
ran on ONNX Runtime's CPU provider (``"backend": "onnxruntime-cpu"``) or on TensorRT (``"tensorrt"``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import artifact_kind, atomic_write_json, report_path
from ..errors import UserError
from .kinds import CPU_PROVIDER, ENGINE_PROVIDER, EP_PROVIDERS, PRECISIONS, Combination, check_precision, check_runtime

FORMAT = "resnet-parity"
VERSION = 2  # 2: "runtime", "provider" and "precision" at the top level
READABLE_VERSIONS = (1, 2)


class ReportError(UserError):
    """A parity report that cannot be read or is not one of ours."""


@dataclass(frozen=True)
class ParityReport:
    """The fields of a parity report that decide admission, plus the whole document (``data``)."""

    path: Path
    passed: bool
    failures: tuple[str, ...]
    combination: Combination
    model: str
    created: str
    data: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ParityReport:
        """Read and check a report; ``ReportError`` (one line) for a missing, unreadable or foreign file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ReportError(f"no parity report {path.name}") from None
        except (OSError, ValueError, RecursionError) as e:
            raise ReportError(f"{path.name} is not readable JSON ({type(e).__name__})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ReportError(f"{path.name} is not a parity report (format {FORMAT!r} expected)")
        if data.get("version") not in READABLE_VERSIONS:
            raise ReportError(
                f"{path.name} has report version {data.get('version')!r}; this code reads {READABLE_VERSIONS}"
            )
        try:
            combination = _combination(data)
        except (ValueError, TypeError, KeyError) as e:
            raise ReportError(f"{path.name}: {e}") from None
        failures = data.get("failures") or []
        return cls(
            path=path,
            passed=data.get("passed") is True,
            failures=tuple(str(f) for f in failures) if isinstance(failures, list) else (str(failures),),
            combination=combination,
            model=str(data.get("model", "")),
            created=str(data.get("created", "")),
            data=data,
        )

    def verdict(self) -> str:
        """Empty when it passed, else why the artifact may not be served, in words."""
        if self.passed:
            return ""
        return f"{self.path.name} says its gate failed" + (f" ({self.failures[0]})" if self.failures else "")


def _combination(data: dict[str, Any]) -> Combination:
    """The runtime + provider + precision a report ran: recorded (version 2) or from its candidate info (version 1)."""
    if "runtime" in data:
        return Combination(
            check_runtime(data["runtime"]),
            str(data["provider"]),
            check_precision(data["precision"], "report precision"),
        )
    candidate = data.get("candidate")
    if not isinstance(candidate, dict):
        raise ValueError("no candidate entry to tell what it ran on")
    precision = candidate.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown candidate precision {precision!r}")
    backend = candidate.get("backend")
    if backend == "tensorrt":
        return Combination("tensorrt", ENGINE_PROVIDER, precision)
    if backend == "onnxruntime-cpu":
        return Combination("onnxruntime", CPU_PROVIDER, precision)
    raise ValueError(f"candidate backend {backend!r} is not one a version-1 report could have run")


def home_combination(artifact: str | os.PathLike[str], precision: str) -> Combination:
    """The combination an artifact's own gate runs: an engine on TensorRT, a graph on ONNX Runtime's CPU provider."""
    if artifact_kind(artifact) == "engine":
        return Combination("tensorrt", ENGINE_PROVIDER, check_precision(precision))
    return Combination("onnxruntime", CPU_PROVIDER, check_precision(precision))


def combination_report_path(artifact: str | os.PathLike[str], combination: Combination) -> Path:
    """Where the report of ``combination`` run on ``artifact`` lives (see the module docstring)."""
    artifact = Path(artifact)
    if combination.runtime == home_combination(artifact, combination.precision).runtime and (
        combination.provider in (CPU_PROVIDER, ENGINE_PROVIDER)
    ):
        return report_path(artifact)
    return artifact.with_name(f"{artifact.name}.{combination.slug}.parity.json")


def find_report(artifact: str | os.PathLike[str], combination: Combination) -> ParityReport | None:
    """The report of exactly ``combination`` on ``artifact``, or None when there is none. A report at that path
    that ran another combination (renamed by hand) or cannot be read raises ``ReportError``."""
    path = combination_report_path(artifact, combination)
    if not path.is_file():
        return None
    report = ParityReport.read(path)
    if report.combination != combination:
        raise ReportError(
            f"{path.name} ran {report.combination.describe()}, not {combination.describe()}: it admits nothing here"
        )
    return report


def admitting_report(artifact: str | os.PathLike[str], combination: Combination) -> tuple[ParityReport | None, str]:
    """``(report, "")`` when ``combination`` may serve ``artifact``; ``(None, why not)`` otherwise.

    A GPU (or any non-CPU) combination needs a passing report of exactly that combination. The CPU combination of a graph is admitted
    as before (report None when there is none; its gate admitted the file itself), unless its report says it failed.
    """
    try:
        report = find_report(artifact, combination)
    except ReportError as e:
        return None, str(e)
    if report is not None and not report.passed:
        return None, report.verdict()
    if report is None and combination.needs_report:
        name = combination_report_path(artifact, combination).name
        return None, f"no parity report {name} for {combination.describe()} ({gate_command(artifact, combination)})"
    return report, ""


def gate_command(artifact: str | os.PathLike[str], combination: Combination) -> str:
    """The command that gates ``combination`` on ``artifact``, for messages."""
    name = Path(artifact).name
    if combination.runtime != "onnxruntime":
        return f"gate it: python -m export.parity model.pt {name}"
    ep = next((k for k, v in EP_PROVIDERS.items() if v == combination.provider), combination.provider)
    fp16 = " --trt-fp16" if ep == "tensorrt" and combination.precision == "fp16" and ".fp16." not in name else ""
    return f"gate it: python -m export.parity model.pt {name} --ep {ep}{fp16}"


def write_report(path: str | os.PathLike[str], report: dict[str, Any], combination: Combination) -> Path:
    """Write a report dict (atomically) with its format, version and combination at the top level."""
    doc = {"format": FORMAT, "version": VERSION, **report, **combination.as_dict()}
    return atomic_write_json(path, doc)
