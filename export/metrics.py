"""How close a candidate's logits are to the reference's: crop-level and image-level (ten-crop) agreement.

Non-finite outputs (an FP16 graph whose activations overflow, say) are counted, not averaged into NaN: the gate
reports them in words, and no numpy warning reaches the terminal.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from resnet.preprocess import crop_probabilities, topk_indices


def nonfinite_count(x: np.ndarray) -> int:
    """How many values of ``x`` are NaN or infinite."""
    return int(x.size - np.count_nonzero(np.isfinite(x)))


def nonfinite_failure(precision: str, bad: int, total: int) -> str:
    """The gate's words for a candidate that produced NaN/Inf: ``FP16 overflow: N of M outputs NaN/Inf``."""
    what = "overflow" if precision == "fp16" else "non-finite outputs"
    return f"{precision.upper()} {what}: {bad} of {total} outputs NaN/Inf"


def finite_or_none(value: Any) -> Any:
    """JSON-safe numbers: NaN/Inf become None (recursively through dicts and lists)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


def crop_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, Any]:
    """Crop-level agreement of two ``[N, C]`` logit arrays."""
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    with np.errstate(all="ignore"):
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
            "nonfinite": nonfinite_count(cand),
        }


def _accuracy(top: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "top1": float(100.0 * np.mean(top[:, 0] == labels)),
        "top5": float(100.0 * np.mean((top == labels[:, None]).any(axis=1))),
    }


def image_metrics(ref: np.ndarray, cand: np.ndarray, per_image: int, labels: np.ndarray | None) -> dict[str, Any]:
    """Image-level (ten-crop mean of softmax) agreement, and labelled accuracy of both when labels exist."""
    with np.errstate(all="ignore"):
        pr, pc = crop_probabilities(ref, per_image), crop_probabilities(cand, per_image)
    k = min(5, pr.shape[1])
    tr, tc = topk_indices(pr, k), topk_indices(pc, k)
    out: dict[str, Any] = {
        "images": int(len(pr)),
        "top1_agreement": float(100.0 * np.mean(tr[:, 0] == tc[:, 0])),
        "top5_agreement": float(100.0 * np.mean([set(a) == set(b) for a, b in zip(tr, tc)])),
    }
    if labels is not None:
        a_ref, a_cand = _accuracy(tr, labels), _accuracy(tc, labels)
        out["accuracy"] = {"reference": a_ref, "candidate": a_cand, "top1_change": a_cand["top1"] - a_ref["top1"]}
    return out
