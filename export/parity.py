"""``python -m export.parity REFERENCE CANDIDATE``: do the predictions stay the same on real images?

The reference is the checkpoint in PyTorch FP32 on the CPU (TF32 and reduced-precision matmul off). The candidate
is an ONNX file run by ONNX Runtime (CPU execution provider) or a TensorRT engine (``*.plan``, on the GPU). Both see
the same real images through the shared ten-crop preprocessing (``resnet.preprocess``): by default the bundled
sample photos, or ``--images DIR`` (a flat folder of images, or an ImageFolder ``DIR/<label>/*.png`` whose folder
names are the model's labels, which adds labelled top-1/top-5 accuracy of both).

The candidate runs all crops at batch 10 (one ten-crop image per batch, as served), the first crops one by one
(batch 1), and one batch of exactly ``--max-batch`` crops, each compared with the reference on the same crops.
Reported: image top-1 agreement (ten-crop mean of softmax, as served), top-5 agreement (same top-5 set), crop top-1
agreement, logit cosine min/mean, max-abs and relative-L2 error, labelled accuracy of both, timings, the thresholds
and ``passed``. The report is written atomically to ``<candidate>.parity.json``.

A candidate that fails (or cannot even run) is renamed to ``<candidate>.rejected`` (a TensorRT engine's sidecar to
``<plan>.json.rejected``) and the command exits 3; nothing is left under a name a server would load.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import resnet
from resnet import ParityError, UsageError, UserError, artifacts
from resnet.artifacts import DEFAULT_MAX_BATCH
from resnet.card import ModelCard
from resnet.preprocess import CROPS, IMAGE_SUFFIXES, crop_probabilities, folder_label_indices, topk_indices
from resnet.samples import sample_photo_paths

from .log import log, progress

FORMAT, VERSION = "resnet-parity", 1
SERVE_BATCH = 10  # one ten-crop image: the batch the server sends most
BATCH1_CROPS = 10  # how many crops the batch-1 pass runs
REFERENCE_BATCH = 50  # the reference's batch size does not matter for its result, only for its speed


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


def add_gate_arguments(p: argparse.ArgumentParser) -> None:
    """The image and batch options every gated command shares."""
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of images, or an ImageFolder (DIR/<label>/img) for labelled accuracy "
        "(default: the bundled sample photos)",
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
        default=None,
        help=f"largest batch to check (default {DEFAULT_MAX_BATCH}; an engine's own maximum for a .plan)",
    )


def add_threshold_argument(p: argparse.ArgumentParser, flag: str, preset: str) -> None:
    t = PRESETS[preset]
    p.add_argument(
        flag,
        default=None,
        metavar="K=V,...",
        help=f"override {preset.upper()} gate thresholds (defaults: {_fmt_thresholds(t)}); "
        "'none' switches max_top1_change/min_top5_agreement off",
    )


def _fmt_thresholds(t: Thresholds) -> str:
    return ", ".join(f"{k}={v}" for k, v in t.as_dict().items())


def thresholds_from_args(args: argparse.Namespace, preset: str, attr: str = "thresholds") -> Thresholds:
    if args.max_batch is not None and args.max_batch < 1:
        raise UsageError("--max-batch must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    return parse_thresholds(getattr(args, attr, None), PRESETS[preset])


# ---------------------------------------------------------------------------------------------------- images


@dataclass
class ImageSet:
    """Real images, preprocessed once: ``crops`` is float32 ``[n_images * crops_per_image, 3, S, S]``."""

    source: str
    files: list[str]
    crops: np.ndarray
    crops_per_image: int
    labels: np.ndarray | None  # the card's class index of each image, when the folder is a matching ImageFolder
    note: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "count": len(self.files),
            "crops": "ten" if self.crops_per_image == 10 else "center",
            "crops_total": int(len(self.crops)),
            "labelled": self.labels is not None,
            "files": self.files if len(self.files) <= 50 else self.files[:50] + [f"... {len(self.files) - 50} more"],
            **({"note": self.note} if self.note else {}),
        }


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _spread(n: int, limit: int | None) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def load_image_set(images: Path | None, card: ModelCard, crops: str = "ten", limit: int | None = None) -> ImageSet:
    """The gate's images: bundled sample photos, a flat folder, or an ImageFolder (labels from folder names)."""
    labels: list[int] | None = None
    note = None
    if images is None:
        paths = sample_photo_paths()
        source = "bundled sample photos (scikit-image)"
        if not paths:
            raise UserError("the bundled sample photos are missing (is scikit-image installed?); pass --images DIR")
    else:
        if not images.is_dir():
            raise UsageError(f"--images {images}: no such folder")
        source = str(images)
        subdirs = sorted(d for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
        if subdirs:
            from torchvision.datasets import ImageFolder

            folder = ImageFolder(str(images), allow_empty=True)
            paths = [Path(p) for p, _ in folder.samples]
            mapping = folder_label_indices(list(folder.classes), list(card.labels))
            if mapping is None:
                note = "folder names are not the model's labels: accuracy not measured"
                log(f"note: {images}: {note}")
            else:
                labels = [mapping[c] for _, c in folder.samples]
        else:
            paths = _image_files(images)
        if not paths:
            raise UsageError(f"--images {images}: no image files found")
    keep = _spread(len(paths), limit)
    paths = [paths[i] for i in keep]
    label_arr = np.asarray([labels[i] for i in keep], dtype=np.int64) if labels is not None else None
    batches = []
    for path in progress(paths, "preprocess", total=len(paths)):
        try:
            batches.append(resnet.preprocess(path, card, crops=crops))
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    root = images if images is not None else None
    names = [str(p.relative_to(root)) if root is not None else p.name for p in paths]
    return ImageSet(source, names, np.concatenate(batches), CROPS[crops], label_arr, note)


# ---------------------------------------------------------------------------------------------- reference


def fp32_reference_settings() -> None:
    """The reference is true FP32: no TF32 on CUDA, highest matmul precision on every backend."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


@dataclass
class Reference:
    """PyTorch FP32 CPU logits for an image set, computed once and shared by every gate of a run."""

    card: ModelCard
    logits: np.ndarray
    info: dict[str, Any]

    @classmethod
    def from_model(cls, model: Any, card: ModelCard, images: ImageSet, source: str) -> Reference:
        import torch

        fp32_reference_settings()
        model = model.eval().float().cpu()
        x = torch.from_numpy(images.crops)
        start = time.perf_counter()
        chunks = range(0, len(x), REFERENCE_BATCH)
        with torch.inference_mode():
            outs = [model(x[i : i + REFERENCE_BATCH]).numpy() for i in progress(chunks, "reference", len(chunks))]
        seconds = time.perf_counter() - start
        info = {
            "backend": "pytorch-fp32-cpu",
            "path": source,
            "torch": torch.__version__,
            "seconds": round(seconds, 3),
        }
        return cls(card, np.concatenate(outs).astype(np.float32), info)


# ----------------------------------------------------------------------------------------------- candidates


class OnnxCandidate:
    """An ONNX file with our card, run by ONNX Runtime on the CPU."""

    kind = "onnx"

    def __init__(self, path: Path, card: ModelCard | None = None) -> None:
        import onnx
        import onnxruntime as ort

        from resnet.onnx_card import read_onnx_card

        self.card = card if card is not None else read_onnx_card(path)
        try:
            proto = onnx.load(str(path))
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # a corrupt or unrunnable graph: one line
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            raise UserError(f"{path}: ONNX Runtime cannot load it ({why})") from None
        fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
        self.precision = "fp16" if fp16 else "fp32"
        self.input_name = self.session.get_inputs()[0].name
        self.min_batch, self.max_batch = 1, None
        self.info = {
            "backend": "onnxruntime-cpu",
            "path": str(path),
            "onnxruntime": ort.__version__,
            "providers": self.session.get_providers(),
            "precision": self.precision,
        }

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)

    def close(self) -> None:
        self.session = None


class EngineCandidate:
    """A TensorRT engine (``*.plan``) run through ``resnet.trt_runtime.TensorRTRunner``; card from its sidecar."""

    kind = "plan"

    def __init__(self, path: Path, card: ModelCard | None = None) -> None:
        from resnet.trt_runtime import TensorRTRunner, open_engine, tensorrt_version

        if card is None:  # a published engine: its sidecar must match this machine
            self.card = artifacts.read_sidecar(path).card
            self.runner = open_engine(path)
        else:  # a staged candidate being gated (its sidecar is written only when it passes)
            self.card = card
            self.runner = TensorRTRunner(path)
        self.min_batch, self.max_batch = self.runner.min_batch, self.runner.max_batch
        self.precision = "fp16"
        self.info = {
            "backend": "tensorrt",
            "path": str(path),
            "tensorrt": tensorrt_version(),
            "precision": "fp16",
            "profile": {"min": self.min_batch, "max": self.max_batch},
        }

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.runner.run(x)

    def close(self) -> None:
        self.runner.close()


def open_candidate(path: Path, kind: str, card: ModelCard | None = None) -> OnnxCandidate | EngineCandidate:
    if kind == "engine":
        return EngineCandidate(path, card)
    return OnnxCandidate(path, card)


def check_same_model(reference: ModelCard, candidate: ModelCard, where: Path) -> None:
    """The candidate must have been made from the reference's network (same classes, sizes and normalisation)."""
    keys = ("num_classes", "labels", "input_size", "resize_size", "mean", "std")
    diff = [k for k in keys if getattr(reference, k) != getattr(candidate, k)]
    if diff:
        fields = ", ".join(diff)
        raise UserError(f"{where}: its model card differs from the reference's in {fields}; not the same model")


# ------------------------------------------------------------------------------------------------- metrics


def crop_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, Any]:
    """Crop-level agreement of two ``[N, C]`` logit arrays."""
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    cos = np.where(norms > 0, (r * c).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
    diff = r - c
    return {
        "crops": int(len(r)),
        "crop_top1_agreement": float(100.0 * np.mean(r.argmax(1) == c.argmax(1))),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "max_abs": float(np.abs(diff).max()),
        "rel_l2": float(np.linalg.norm(diff) / max(np.linalg.norm(r), 1e-300)),
    }


def _topk_idx(probs: np.ndarray, k: int) -> np.ndarray:
    return topk_indices(probs, k)


def image_metrics(ref: np.ndarray, cand: np.ndarray, per_image: int, labels: np.ndarray | None) -> dict[str, Any]:
    """Image-level (ten-crop mean of softmax) agreement, and labelled accuracy of both when labels exist."""
    pr, pc = crop_probabilities(ref, per_image), crop_probabilities(cand, per_image)
    k = min(5, pr.shape[1])
    tr, tc = _topk_idx(pr, k), _topk_idx(pc, k)
    out: dict[str, Any] = {
        "images": int(len(pr)),
        "top1_agreement": float(100.0 * np.mean(tr[:, 0] == tc[:, 0])),
        "top5_agreement": float(100.0 * np.mean([set(a) == set(b) for a, b in zip(tr, tc)])),
    }
    if labels is not None:

        def acc(top: np.ndarray) -> dict[str, float]:
            return {
                "top1": float(100.0 * np.mean(top[:, 0] == labels)),
                "top5": float(100.0 * np.mean((top == labels[:, None]).any(axis=1))),
            }

        a_ref, a_cand = acc(tr), acc(tc)
        out["accuracy"] = {"reference": a_ref, "candidate": a_cand, "top1_change": a_cand["top1"] - a_ref["top1"]}
    return out


def _run_batches(candidate: Any, x: np.ndarray, batch: int, desc: str) -> np.ndarray:
    starts = range(0, len(x), batch)
    return np.concatenate([candidate.run(x[i : i + batch]) for i in progress(starts, desc, len(starts))])


def evaluate(
    reference: Reference, candidate: Any, images: ImageSet, thresholds: Thresholds, max_batch: int
) -> dict[str, Any]:
    """Run the candidate at batch 10, 1 and ``max_batch``; compare with the reference; apply the thresholds."""
    x, ref = images.crops, reference.logits
    n = len(x)
    lo, hi = candidate.min_batch, candidate.max_batch or max_batch
    if max_batch > hi:
        raise UsageError(f"--max-batch {max_batch} is larger than the candidate's maximum batch {hi}")
    serve_batch = max(lo, min(SERVE_BATCH, max_batch))
    plan = {serve_batch: np.arange(n)}  # every crop at the serving batch; then batch 1 and the largest batch
    plan.setdefault(lo, np.arange(min(BATCH1_CROPS, n)))
    plan.setdefault(max_batch, np.arange(max_batch) % n)
    failures: list[str] = []
    per_batch: dict[str, Any] = {}
    main: np.ndarray | None = None
    seconds = 0.0
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
        if batch == serve_batch:
            main, seconds = out, elapsed
        elif main is not None:
            entry[f"max_abs_vs_batch_{serve_batch}"] = float(np.abs(out - main[idx]).max())
        per_batch[str(batch)] = entry
    report: dict[str, Any] = {"batch_sizes": per_batch}
    if main is not None:
        per_image = image_metrics(ref, main, images.crops_per_image, images.labels)
        report["metrics"] = {**crop_metrics(ref, main), **per_image}
        report["candidate_seconds"] = round(seconds, 3)
        m = report["metrics"]
        t = thresholds
        if m["top1_agreement"] < t.min_top1_agreement:
            failures.append(f"top-1 agreement {m['top1_agreement']:.2f}% < {t.min_top1_agreement}%")
        if t.min_top5_agreement is not None and m["top5_agreement"] < t.min_top5_agreement:
            failures.append(f"top-5 agreement {m['top5_agreement']:.2f}% < {t.min_top5_agreement}%")
        worst = min(e["cosine_min"] for e in per_batch.values())
        if worst < t.min_cosine:
            failures.append(f"logit cosine min {worst:.6f} < {t.min_cosine}")
        if "accuracy" in m and t.max_top1_change is not None:
            change = m["accuracy"]["top1_change"]
            if abs(change) > t.max_top1_change + 1e-9:
                failures.append(f"labelled top-1 changed by {change:+.2f} points (limit {t.max_top1_change})")
    report["failures"] = failures
    report["passed"] = not failures
    return report


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
) -> dict[str, Any]:
    """Gate the candidate at ``staged``; publish it as ``final`` or reject it. Writes ``<final>.parity.json``.

    Raises ``ParityError`` (exit 3) when the gate fails, after moving the candidate to ``<final>.rejected``.
    ``on_pass(report)`` runs before the candidate is published (the engine writes its sidecar there).
    """
    final = Path(final or staged)
    kind = artifacts.artifact_kind(final)
    candidate = open_candidate(staged, kind, card)
    try:
        check_same_model(reference.card, candidate.card, final)
        if max_batch is None:
            max_batch = candidate.max_batch or DEFAULT_MAX_BATCH
        result = evaluate(reference, candidate, images, thresholds, max_batch)
        cand_info = {**candidate.info, "path": str(final)}
    finally:
        candidate.close()
    report = {
        "format": FORMAT,
        "version": VERSION,
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
    rpath = artifacts.report_path(final)
    if report["passed"]:
        if on_pass is not None:
            on_pass(report)
        if staged != final:
            artifacts.publish(staged, final)
        artifacts.atomic_write_json(rpath, report)
        return report
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


def summary_line(report: dict[str, Any]) -> str:
    """One human line: ``parity passed: top-1 100.00%, cosine min 0.999998, max-abs 2.1e-05 ...``."""
    m = report.get("metrics", {})
    parts = [
        f"parity {'passed' if report['passed'] else 'FAILED'} on {report['images']['count']} images "
        f"x {report['images']['crops']}-crop, batch {','.join(report['batch_sizes'])}",
        f"top-1 {m.get('top1_agreement', float('nan')):.2f}%",
        f"top-5 {m.get('top5_agreement', float('nan')):.2f}%",
        f"cosine min {m.get('cosine_min', float('nan')):.6f}",
        f"max-abs {m.get('max_abs', float('nan')):.2e}",
    ]
    if "accuracy" in m:
        a = m["accuracy"]
        parts.append(f"labelled top-1 {a['reference']['top1']:.2f}% -> {a['candidate']['top1']:.2f}%")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------------- CLI


def detect_preset(candidate: Path) -> str:
    """fp16 for an engine or an ONNX graph with FP16 weights, else fp32."""
    if artifacts.artifact_kind(candidate) == "engine":
        return "fp16"
    try:
        import onnx

        proto = onnx.load(str(candidate), load_external_data=False)
    except Exception:
        return "fp32"  # the candidate's loader reports a bad file with a clear line
    return "fp16" if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer) else "fp32"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.parity",
        description="Compare a candidate (ONNX or TensorRT engine) with its PyTorch FP32 reference on real images "
        "(ten-crop). Writes <candidate>.parity.json; a failed candidate is renamed to <candidate>.rejected. "
        "Exit codes: 0 passed, 1 failed to run, 2 bad usage, 3 gate failed.",
    )
    p.add_argument("reference", type=Path, help="the checkpoint (*.pt, or a torchvision state dict with --arch)")
    p.add_argument("candidate", type=Path, help="an ONNX file exported by this project, or a *.plan engine")
    p.add_argument("--arch", default=None, help="architecture of a plain torchvision state dict, e.g. resnet50")
    p.add_argument(
        "--preset",
        choices=("auto", *PRESETS),
        default="auto",
        help="threshold preset; auto: fp16 for an engine or a graph with FP16 weights, else fp32",
    )
    p.add_argument(
        "--thresholds",
        default=None,
        metavar="K=V,...",
        help="override preset thresholds, e.g. min_cosine=0.9995,max_top1_change=0.5 "
        f"(fp32: {_fmt_thresholds(PRESETS['fp32'])}; fp16: {_fmt_thresholds(PRESETS['fp16'])})",
    )
    add_gate_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.candidate.is_file():
        raise UserError(f"no such file: {args.candidate}")
    preset = detect_preset(args.candidate) if args.preset == "auto" else args.preset
    thresholds = thresholds_from_args(args, preset)
    artifacts.ensure_writable(args.candidate.parent)
    model, card = resnet.load_checkpoint(args.reference, arch=args.arch)
    engine = artifacts.artifact_kind(args.candidate) == "engine"
    cand_card = artifacts.read_card(args.candidate)
    check_same_model(card, cand_card, args.candidate)
    images = load_image_set(args.images, card, limit=args.limit)
    log(f"reference {args.reference} (PyTorch FP32, CPU) on {len(images.files)} images from {images.source}")
    reference = Reference.from_model(model, card, images, str(args.reference))
    # A published engine is opened through its sidecar, which is checked against this machine's TensorRT and GPU.
    card_arg = None if engine else cand_card
    report = gate_candidate(reference, args.candidate, images, thresholds, args.max_batch, card=card_arg)
    log(f"{args.candidate} ({preset.upper()} gate): {summary_line(report)}")
    log(f"report: {artifacts.report_path(args.candidate)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(resnet.run_cli(main, sys.argv[1:], prog="export.parity"))
