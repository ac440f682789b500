"""The gate's multi-scale protocol: a candidate that takes any input size is also checked on the paper's test.

The first images of the gate set (``ImageSet.views``) are run whole at every multi-scale side with their mirror
(``resnet.multiscale``: [2, 3, H, W] per side, so several heights and widths per image) through the reference and
the candidate. Reported under ``multiscale`` in the parity report: the sizes run, crop-level metrics over every view,
and image-level agreement of the multi-scale scores (mean softmax over sides and flips). The same thresholds apply as
to the ten-crop protocol (minimum cosine, minimum top-1 agreement); failures are prefixed ``multi-scale:``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resnet import UserError
from resnet.multiscale import multiscale_probabilities
from resnet.preprocess import topk_indices
from resnet.runtime.runner import Runner
from resnet.runtime.tensorrt import choose_profile

from .candidates import Reference
from .images import ImageSet
from .metrics import crop_metrics, nonfinite_count, nonfinite_failure

VIEW_BATCH = 2  # one side of one image: the view and its mirror


def _runnable(candidate: Runner, view: np.ndarray) -> bool:
    profiles = candidate.profiles
    if profiles:  # a TensorRT engine: its multi-scale profile has its own batch range, apart from the ten-crop one
        return choose_profile(profiles, view.shape) is not None
    lo, hi = candidate.spatial
    h, w = view.shape[2:]
    batch_ok = candidate.min_batch <= len(view) <= (candidate.max_batch or len(view))
    return batch_ok and lo <= min(h, w) and max(h, w) <= hi


def _agreement(ref: list[np.ndarray], cand: list[np.ndarray]) -> tuple[float, float]:
    """Top-1 and top-5 agreement (%) of the images' multi-scale scores."""
    pr = np.concatenate([multiscale_probabilities(r) for r in ref])
    pc = np.concatenate([multiscale_probabilities(c) for c in cand])
    k = min(5, pr.shape[1])
    tr, tc = topk_indices(pr, k), topk_indices(pc, k)
    top1 = float(100.0 * np.mean(tr[:, 0] == tc[:, 0]))
    top5 = float(100.0 * np.mean([set(a) == set(b) for a, b in zip(tr, tc)]))
    return top1, top5


def multiscale_check(
    reference: Reference, candidate: Runner, images: ImageSet, min_top1_agreement: float, min_cosine: float
) -> tuple[dict[str, Any] | None, list[str]]:
    """``(report entry or None, failures)`` of the multi-scale protocol; None when the set has no views."""
    if not images.views or not reference.view_logits:
        return None, []
    if candidate.spatial is None:
        return {"checked": False, "why": "the candidate takes only the card's input size"}, []
    refs: list[list[np.ndarray]] = []
    cands: list[list[np.ndarray]] = []
    shapes: list[list[int]] = []
    skipped = 0
    for per_side, ref_side in zip(images.views, reference.view_logits):
        kept = [(v, r) for v, r in zip(per_side, ref_side) if _runnable(candidate, v)]
        skipped += len(per_side) - len(kept)
        if not kept:
            continue
        outs = []
        for v, _ in kept:
            try:
                outs.append(np.asarray(candidate.run(v), dtype=np.float32))
            except UserError:
                raise
            except Exception as e:  # a candidate that cannot run a size it claims to take is not admissible
                why = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
                h, w = v.shape[2:]
                return {"checked": True}, [f"multi-scale: candidate failed at {h}x{w}: {why}"]
        refs.append([r for _, r in kept])
        cands.append(outs)
        shapes += [list(v.shape[2:]) for v, _ in kept]
    if not cands:
        return {"checked": False, "why": f"no view fits the candidate's sizes {list(candidate.spatial)}"}, []
    ref_all = np.concatenate([np.concatenate(r) for r in refs])
    cand_all = np.concatenate([np.concatenate(c) for c in cands])
    entry: dict[str, Any] = {"checked": True, "images": len(cands), "sides": list(images.sides), "sizes": shapes}
    entry.update(crop_metrics(ref_all, cand_all))
    if skipped:
        entry["views_skipped"] = skipped  # outside an engine profile's spatial range
    bad = nonfinite_count(cand_all)
    if bad:
        return entry, [f"multi-scale: {nonfinite_failure(candidate.precision, bad, cand_all.size)}"]
    entry["top1_agreement"], entry["top5_agreement"] = _agreement(refs, cands)
    failures = []
    if entry["top1_agreement"] < min_top1_agreement:
        failures.append(f"multi-scale: top-1 agreement {entry['top1_agreement']:.2f}% < {min_top1_agreement}%")
    if entry["cosine_min"] < min_cosine:
        failures.append(f"multi-scale: logit cosine min {entry['cosine_min']:.6f} < {min_cosine}")
    return entry, failures
