"""The parity gate: thresholds and their presets, evaluating a candidate, the report, and stage -> gate -> publish.

The candidate runs all crops at batch 10 (one ten-crop image per batch, as served), the first crops one by one
(batch 1), and one batch of exactly ``max_batch`` crops, each compared with the reference on the same crops; a
candidate that takes any input size also runs the paper's multi-scale test on the first images (``export.views``).
Reported: image top-1 agreement (ten-crop mean of softmax, as served), top-5 agreement, crop top-1 agreement, logit
cosine min/mean, max-abs and relative-L2 error, non-finite outputs, labelled accuracy of both, timings, the
thresholds and ``passed``, written atomically to ``<candidate>.parity.json``. A candidate that fails is renamed to
``<candidate>.rejected`` and ``ParityError`` (exit 3) is raised.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnet import ParityError, UsageError, UserError, artifacts
from resnet.artifacts import DEFAULT_MAX_BATCH
from resnet.card import ModelCard
from resnet.runtime.crops import TEN_CROPS
from resnet.runtime.kinds import EP_PROVIDERS, ep_combinations, int8_target, not_offered
from resnet.runtime.ort import ProviderUnavailable
from resnet.runtime.report import FORMAT, VERSION, combination_report_path, home_combination
from resnet.runtime.runner import Runner, combination_of

from .candidates import Reference, check_same_model, open_candidate
from .images import ImageSet
from .log import log, progress
from .metrics import crop_metrics, finite_or_none, image_metrics, nonfinite_count, nonfinite_failure
from .views import multiscale_check

SERVE_BATCH = BATCH1_CROPS = TEN_CROPS  # one ten-crop image: the batch the server sends most; crops run one by one


@dataclass(frozen=True)
class Thresholds:
    """What a candidate must meet. Agreements and accuracy changes are in percent (points)."""

    min_top1_agreement: float  # % of images whose ten-crop top-1 equals the reference's
    min_cosine: float  # minimum, over every crop and batch size, of cos(reference logits, candidate logits)
    max_top1_change: float | None  # |labelled top-1 accuracy change| in points (checked when labels exist)
    min_top5_agreement: float | None = None  # % of images whose top-5 set equals the reference's (off by default)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, Thresholds] = {
    "fp32": Thresholds(min_top1_agreement=100.0, min_cosine=0.99999, max_top1_change=0.0),
    "fp16": Thresholds(min_top1_agreement=99.5, min_cosine=0.999, max_top1_change=0.2),
    "int8": Thresholds(min_top1_agreement=99.0, min_cosine=0.9, max_top1_change=0.5),
}


def parse_thresholds(text: str | None, base: Thresholds) -> Thresholds:
    """``"min_cosine=0.9995,max_top1_change=0.5"`` over a preset; ``none`` switches an optional check off."""
    if not text:
        return base
    fields = {f.name for f in dataclasses.fields(Thresholds)}
    values: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, raw = part.strip().partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            known = ", ".join(sorted(fields))
            raise UsageError(f"bad threshold {part.strip()!r}; use KEY=VALUE with KEY one of {known}")
        if raw.strip().lower() == "none":
            if key in ("min_top1_agreement", "min_cosine"):
                raise UsageError(f"threshold {key} cannot be switched off")
            values[key] = None
            continue
        try:
            values[key] = float(raw)
        except ValueError:
            raise UsageError(f"threshold {key} needs a number, not {raw!r}") from None
    return dataclasses.replace(base, **values)


def add_gate_arguments(
    p: argparse.ArgumentParser,
    max_batch_default: int | None = None,
    max_batch_help: str | None = None,
    images_default: str = "the bundled sample photos",
) -> None:
    """The image and batch options every gated command shares."""
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help=f"folder of images, or an ImageFolder (DIR/<label>/img) for labelled accuracy (default: {images_default})",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use at most this many images, spread evenly over the folder (default: all)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=max_batch_default,
        help=max_batch_help
        or f"largest batch to check (default {DEFAULT_MAX_BATCH}; an engine's own maximum for a .plan)",
    )


def fmt_thresholds(t: Thresholds) -> str:
    return ", ".join(f"{k}={v}" for k, v in t.as_dict().items())


def add_threshold_argument(p: argparse.ArgumentParser, flag: str, preset: str) -> None:
    p.add_argument(
        flag,
        default=None,
        metavar="K=V,...",
        help=f"override {preset.upper()} gate thresholds (defaults: {fmt_thresholds(PRESETS[preset])}); "
        "'none' switches max_top1_change/min_top5_agreement off",
    )


def thresholds_from_args(args: argparse.Namespace, preset: str, attr: str = "thresholds") -> Thresholds:
    if args.max_batch is not None and args.max_batch < 1:
        raise UsageError("--max-batch must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    return parse_thresholds(getattr(args, attr, None), PRESETS[preset])


# ------------------------------------------------------------------------------------------------ evaluate


def _run_batches(candidate: Runner, x: np.ndarray, batch: int, desc: str) -> np.ndarray:
    starts = range(0, len(x), batch)
    return np.concatenate([candidate.run(x[i : i + batch]) for i in progress(starts, desc, len(starts))])


def _batch_plan(candidate: Runner, n: int, max_batch: int) -> tuple[int, dict[int, np.ndarray]]:
    """The serving batch, and which crops run at which batch size (all at the serving batch, then 1 and max)."""
    lo, hi = candidate.min_batch, candidate.max_batch or max_batch
    if max_batch > hi:
        raise UsageError(f"--max-batch {max_batch} is larger than the candidate's maximum batch {hi}")
    serve_batch = max(lo, min(SERVE_BATCH, max_batch))
    plan = {serve_batch: np.arange(n)}
    plan.setdefault(lo, np.arange(min(BATCH1_CROPS, n)))
    plan.setdefault(max_batch, np.arange(max_batch) % n)
    return serve_batch, plan


def threshold_failures(metrics: dict[str, Any], worst_cosine: float, t: Thresholds) -> list[str]:
    """Which thresholds finite metrics miss, in words."""
    failures = []
    if metrics["top1_agreement"] < t.min_top1_agreement:
        failures.append(f"top-1 agreement {metrics['top1_agreement']:.2f}% < {t.min_top1_agreement}%")
    if t.min_top5_agreement is not None and metrics["top5_agreement"] < t.min_top5_agreement:
        failures.append(f"top-5 agreement {metrics['top5_agreement']:.2f}% < {t.min_top5_agreement}%")
    if worst_cosine < t.min_cosine:
        failures.append(f"logit cosine min {worst_cosine:.6f} < {t.min_cosine}")
    if "accuracy" in metrics and t.max_top1_change is not None:
        change = metrics["accuracy"]["top1_change"]
        if abs(change) > t.max_top1_change + 1e-9:
            failures.append(f"labelled top-1 changed by {change:+.2f} points (limit {t.max_top1_change})")
    return failures


def evaluate(
    reference: Reference, candidate: Runner, images: ImageSet, thresholds: Thresholds, max_batch: int
) -> dict[str, Any]:
    """Run the candidate at batch 10, 1 and ``max_batch``; compare with the reference; apply the thresholds."""
    x, ref = images.crops, reference.logits
    serve_batch, plan = _batch_plan(candidate, len(x), max_batch)
    failures: list[str] = []
    per_batch: dict[str, Any] = {}
    main: np.ndarray | None = None
    seconds = 0.0
    bad = total = 0
    for batch, idx in plan.items():
        start = time.perf_counter()
        try:
            out = _run_batches(candidate, x[idx], batch, f"batch {batch}")
        except UserError:
            raise
        except Exception as e:  # the candidate cannot run at this batch size: it is not admissible
            failures.append(f"candidate failed at batch {batch}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            continue
        elapsed = time.perf_counter() - start
        entry = crop_metrics(ref[idx], out)
        entry["seconds"] = round(elapsed, 3)
        bad, total = bad + entry["nonfinite"], total + out.size
        if batch == serve_batch:
            main, seconds = out, elapsed
        elif main is not None:
            with np.errstate(all="ignore"):
                entry[f"max_abs_vs_batch_{serve_batch}"] = float(np.abs(out - main[idx]).max())
        per_batch[str(batch)] = entry
    report: dict[str, Any] = {"batch_sizes": per_batch}
    if bad:  # NaN/Inf: the agreement figures mean nothing; say what happened instead
        failures.insert(0, nonfinite_failure(candidate.precision, bad, total))
    if nonfinite_count(ref):
        failures.insert(0, f"the FP32 reference itself gave {nonfinite_count(ref)} NaN/Inf logits")
    if main is not None:
        report["metrics"] = {
            **crop_metrics(ref, main),
            **image_metrics(ref, main, images.crops_per_image, images.labels),
        }
        report["candidate_seconds"] = round(seconds, 3)
        if not bad and not nonfinite_count(ref):
            worst = min(e["cosine_min"] for e in per_batch.values())
            failures += threshold_failures(report["metrics"], worst, thresholds)
    multiscale, ms_failures = multiscale_check(
        reference, candidate, images, thresholds.min_top1_agreement, thresholds.min_cosine
    )
    if multiscale is not None:
        report["multiscale"] = multiscale
        failures += ms_failures
    report["failures"] = failures
    report["passed"] = not failures
    return finite_or_none(report)


# ---------------------------------------------------------------------------------------------------- gate


def gate_candidate(
    reference: Reference,
    staged: Path,
    images: ImageSet,
    thresholds: Thresholds,
    max_batch: int | None,
    *,
    final: Path | None = None,
    card: ModelCard | None = None,
    on_pass: Callable[[dict[str, Any]], None] | None = None,
    ep: str = "cpu",
    trt_fp16: bool = False,
) -> dict[str, Any]:
    """Gate the candidate at ``staged``; publish it as ``final`` or reject it (``ParityError``, exit 3, after
    moving it to ``<final>.rejected``). Writes the report of the combination it ran (``resnet.runtime.report``).
    ``on_pass(report)`` runs before publishing (an engine writes its sidecar there). ``ep`` / ``trt_fp16``: run a
    graph on another ONNX Runtime provider (``open_candidate``); that gate of a published graph writes its own
    report and neither publishes nor rejects the graph (its CPU gate did)."""
    final = Path(final or staged)
    kind = artifacts.artifact_kind(final)
    candidate = open_candidate(staged, kind, card, ep=ep, trt_fp16=trt_fp16, max_batch=max_batch or DEFAULT_MAX_BATCH)
    try:
        check_same_model(reference.card, candidate.card, final)
        if max_batch is None:
            max_batch = candidate.max_batch or DEFAULT_MAX_BATCH
        result = evaluate(reference, candidate, images, thresholds, max_batch)
        cand_info = {**candidate.info, "path": str(final)}
        combination = combination_of(candidate)
    finally:
        candidate.close()
    report = {
        "format": FORMAT,
        "version": VERSION,
        **combination.as_dict(),  # what it ran: the combination this report admits for serving
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "passed": result["passed"],
        "failures": result["failures"],
        "model": reference.card.name,
        "reference": reference.info,
        "candidate": cand_info,
        "images": images.describe(),
        "thresholds": thresholds.as_dict(),
        "max_batch": max_batch,
        "host": {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()},
        **{k: v for k, v in result.items() if k not in ("passed", "failures")},
    }
    rpath = combination_report_path(final, combination)
    if combination != home_combination(final, combination.precision):  # another provider's gate of a published graph
        artifacts.atomic_write_json(rpath, report)
        if not report["passed"]:
            raise ParityError(
                f"{final.name} failed its parity gate on {combination.describe()}: {'; '.join(report['failures'])} "
                f"(report {rpath.name}; the graph stays, that combination is not served)"
            )
        return report
    _publish_or_reject(staged, final, kind, report, on_pass)
    return report


def _publish_or_reject(
    staged: Path, final: Path, kind: str, report: dict[str, Any], on_pass: Callable[[dict[str, Any]], None] | None
) -> None:
    rpath = artifacts.report_path(final)
    if report["passed"]:
        if on_pass is not None:
            on_pass(report)
        if staged != final:
            artifacts.publish(staged, final)
        artifacts.atomic_write_json(rpath, report)
        return
    artifacts.atomic_write_json(rpath, report)
    rejected = artifacts.reject(staged, final)
    if kind == "engine":
        sidecar = artifacts.sidecar_path(final)
        if sidecar.exists():
            os.replace(sidecar, artifacts.rejected_path(sidecar))
    raise ParityError(
        f"{final.name} failed its parity gate: {'; '.join(report['failures'])} "
        f"(moved to {rejected.name}; report {rpath.name})"
    )


def stage_gate_publish(
    reference: Reference,
    final: Path,
    write: Callable[[Path], None],
    images: ImageSet,
    thresholds: Thresholds,
    max_batch: int | None,
    *,
    card: ModelCard | None = None,
    on_pass: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The one way a new artifact appears: ``write(staged)`` to a hidden staging file, gate it, then publish it as
    ``final`` or reject it (``ParityError``). The staging file never outlives the call."""
    staged = artifacts.staging_path(final)
    try:
        write(staged)
        report = gate_candidate(
            reference, staged, images, thresholds, max_batch, final=final, card=card, on_pass=on_pass
        )
    finally:
        staged.unlink(missing_ok=True)
    if artifacts.artifact_kind(final) == "onnx":
        gate_gpu_providers(reference, final, images, thresholds, max_batch)
    return report


def gate_gpu_providers(
    reference: Reference, graph: Path, images: ImageSet, thresholds: Thresholds, max_batch: int | None
) -> dict[str, str]:
    """Gate a published graph on each GPU provider this onnxruntime has and may offer it to (``not_offered``) in
    each combination of ``ep_combinations``, so the server may serve exactly those. Each writes its own report; a
    failure or a provider that does not load is logged and stops nothing. Returns ``{combination slug:
    passed|failed|not run: why}``; empty on a CPU-only onnxruntime."""
    import onnxruntime as ort

    gpu = [ep for ep in ("tensorrt", "cuda") if EP_PROVIDERS[ep] in ort.get_available_providers()]
    results: dict[str, str] = {}
    card = artifacts.read_card(graph) if gpu else None
    for ep in gpu:
        assert card is not None
        if why_not := not_offered(ep, card):
            log(f"{graph.name}: not offered to {EP_PROVIDERS[ep]}: {why_not}")
            continue
        for combination, trt_fp16 in ep_combinations(ep, card.precision, int8_target(card)):
            # an FP32 graph built in FP16 by TensorRT is held to the FP16 preset, otherwise the graph's own
            preset = PRESETS["fp16"] if trt_fp16 and card.precision == "fp32" else thresholds
            try:
                gate_candidate(reference, graph, images, preset, max_batch, card=card, ep=ep, trt_fp16=trt_fp16)
                results[combination.slug] = "passed"
            except ProviderUnavailable as e:
                results[combination.slug] = f"not run: {e}"
                log(f"{graph.name}: not gated on {EP_PROVIDERS[ep]} ({e})")
                break  # the provider does not load here: its other combinations would not either
            except ParityError as e:
                results[combination.slug] = "failed"
                log(str(e))
            else:
                log(f"{graph.name}: gated on {combination.describe()}: passed")
    return results


def summary_line(report: dict[str, Any]) -> str:
    """One human line: ``parity passed: top-1 100.00%, cosine min 0.999998, max-abs 2.1e-05 ...``."""
    m = report.get("metrics", {})

    def num(key: str, spec: str) -> str:
        value = m.get(key)
        return "n/a" if value is None else format(value, spec)

    parts = [
        f"parity {'passed' if report['passed'] else 'FAILED'} on {report['images']['count']} images "
        f"x {report['images']['crops']}-crop, batch {','.join(report['batch_sizes'])}",
        f"top-1 {num('top1_agreement', '.2f')}%",
        f"top-5 {num('top5_agreement', '.2f')}%",
        f"cosine min {num('cosine_min', '.6f')}",
        f"max-abs {num('max_abs', '.2e')}",
    ]
    if "accuracy" in m:
        a = m["accuracy"]
        parts.append(f"labelled top-1 {a['reference']['top1']:.2f}% -> {a['candidate']['top1']:.2f}%")
    ms = report.get("multiscale") or {}
    if ms.get("top1_agreement") is not None:
        parts.append(
            f"multi-scale top-1 {ms['top1_agreement']:.2f}% on {ms['images']} images at {len(ms['sizes'])} sizes"
        )
    return ", ".join(parts)
