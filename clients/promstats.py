"""The server's own view of a load level, read from its Prometheus `/metrics` text: average batch size and queue time.

Histograms are cumulative, so a level's averages come from the difference of two scrapes (before and after):
``(sum_after - sum_before) / (count_after - count_before)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# The server's histogram names (serve/ metrics module); the first one present is used.
BATCH_SIZE_METRICS = ("resnet_batch_size",)
QUEUE_SECONDS_METRICS = ("resnet_queue_seconds",)


@dataclass(frozen=True)
class HistogramTotals:
    """Sum and count of one histogram (summed over its label sets)."""

    sum: float
    count: float


def histogram_totals(text: str) -> dict[str, HistogramTotals]:
    """Every histogram or summary family in the exposition text, by family name, with its ``_sum`` and ``_count``."""
    totals: dict[str, HistogramTotals] = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("histogram", "summary", "gaugehistogram"):
            continue
        s = sum(x.value for x in family.samples if x.name in (family.name + "_sum", family.name + "_gsum"))
        c = sum(x.value for x in family.samples if x.name in (family.name + "_count", family.name + "_gcount"))
        totals[family.name] = HistogramTotals(s, c)
    return totals


def _delta_mean(before: dict[str, HistogramTotals], after: dict[str, HistogramTotals], names: tuple[str, ...]) -> float | None:
    for name in names:
        if name in after:
            b = before.get(name, HistogramTotals(0.0, 0.0))
            count = after[name].count - b.count
            return (after[name].sum - b.sum) / count if count > 0 else None
    return None


def server_averages(before: str | None, after: str | None) -> tuple[float | None, float | None]:
    """(average batch size, average queue time in ms) between two scrapes; None where unknown."""
    if before is None or after is None:
        return None, None
    b, a = histogram_totals(before), histogram_totals(after)
    batch = _delta_mean(b, a, BATCH_SIZE_METRICS)
    queue = _delta_mean(b, a, QUEUE_SECONDS_METRICS)
    return batch, (queue * 1000.0 if queue is not None else None)
