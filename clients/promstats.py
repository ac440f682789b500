"""The server's own view of a load level, read from its Prometheus `/metrics` text: average batch size and queue time.

Histograms are cumulative, so a level's averages come from the difference of two scrapes (before and after):
``(sum_after - sum_before) / (count_after - count_before)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# The server's histograms (serve/metrics.py): crops per backend batch, and per-stage latency with stage="queue".
BATCH_SIZE_METRIC = ("resnet_serve_batch_size", {})
QUEUE_SECONDS_METRIC = ("resnet_serve_stage_seconds", {"stage": "queue"})


@dataclass(frozen=True)
class HistogramTotals:
    """Sum and count of one histogram (summed over the label sets that match)."""

    sum: float
    count: float


def histogram_totals(text: str, name: str, labels: dict[str, str] | None = None) -> HistogramTotals | None:
    """``_sum`` and ``_count`` of histogram (or summary) family ``name`` in exposition ``text``, over the samples
    whose labels include ``labels``; None when the family is absent."""
    labels = labels or {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        total = {"_sum": 0.0, "_count": 0.0}
        for sample in family.samples:
            suffix = sample.name[len(name) :]
            if suffix in total and all(sample.labels.get(k) == v for k, v in labels.items()):
                total[suffix] += sample.value
        return HistogramTotals(total["_sum"], total["_count"])
    return None


def _delta_mean(before: str, after: str, metric: tuple[str, dict[str, str]]) -> float | None:
    a = histogram_totals(after, *metric)
    if a is None:
        return None
    b = histogram_totals(before, *metric) or HistogramTotals(0.0, 0.0)
    count = a.count - b.count
    return (a.sum - b.sum) / count if count > 0 else None


def server_averages(before: str | None, after: str | None) -> tuple[float | None, float | None]:
    """(average crops per batch, average queue time in ms) between two scrapes; None where unknown."""
    if before is None or after is None:
        return None, None
    batch = _delta_mean(before, after, BATCH_SIZE_METRIC)
    queue = _delta_mean(before, after, QUEUE_SECONDS_METRIC)
    return batch, (queue * 1000.0 if queue is not None else None)
