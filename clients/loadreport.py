"""How `clients.loadgen` reports: a text table, JSON, CSV and a matplotlib PNG, each written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet.atomic import atomic_write

from .load import LevelResult

COLUMNS = (
    "level",
    "requests",
    "ok",
    "img/s",
    "p50 ms",
    "p90 ms",
    "p95 ms",
    "p99 ms",
    "crops/batch",
    "queue ms",
    "errors",
)


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _errors(errors: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in errors.items()) or "0"


def _level(r: LevelResult) -> str:
    return f"{int(r.level)}" if r.mode == "concurrency" else f"{r.level:g}/s"


def format_table(results: Sequence[LevelResult]) -> str:
    """The table printed at the end of a run; ``crops/batch`` and ``queue ms`` are the server's own averages over
    the level, from /metrics (a ten-crop image is 10 crops)."""
    rows = [COLUMNS] + [
        (
            _level(r),
            str(r.requests),
            str(r.ok),
            _num(r.throughput),
            _num(r.latency_ms["p50"]),
            _num(r.latency_ms["p90"]),
            _num(r.latency_ms["p95"]),
            _num(r.latency_ms["p99"]),
            _num(r.server_batch_size, ".2f"),
            _num(r.server_queue_ms),
            _errors(r.errors),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.rjust(w) if i < len(COLUMNS) - 1 else cell for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_json(path: str | os.PathLike[str], results: Sequence[LevelResult], meta: dict[str, Any]) -> Path:
    """``{"meta": {...}, "levels": [...]}``."""
    doc = {"meta": meta, "levels": [r.to_dict() for r in results]}
    return atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())


def write_csv(path: str | os.PathLike[str], results: Sequence[LevelResult]) -> Path:
    """One row per level, latencies flattened into columns, errors as ``status:count`` pairs."""
    buf = io.StringIO()
    fields = [
        "mode",
        "level",
        "elapsed_s",
        "requests",
        "ok",
        "images_ok",
        "throughput_img_s",
        "p50_ms",
        "p90_ms",
        "p95_ms",
        "p99_ms",
        "mean_ms",
        "max_ms",
        "server_batch_size",
        "server_queue_ms",
        "errors",
    ]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow(
            {
                "mode": r.mode,
                "level": r.level,
                "elapsed_s": round(r.elapsed_s, 4),
                "requests": r.requests,
                "ok": r.ok,
                "images_ok": r.images_ok,
                "throughput_img_s": round(r.throughput, 3),
                **{f"{k}_ms": (None if v is None else round(v, 3)) for k, v in r.latency_ms.items()},
                "server_batch_size": None if r.server_batch_size is None else round(r.server_batch_size, 3),
                "server_queue_ms": None if r.server_queue_ms is None else round(r.server_queue_ms, 3),
                "errors": ";".join(f"{k}:{v}" for k, v in r.errors.items()),
            }
        )
    return atomic_write(path, buf.getvalue().encode())


def write_plot(path: str | os.PathLike[str], results: Sequence[LevelResult], title: str = "") -> Path:
    """Throughput and p99 latency against concurrency (or offered rate), two panels sharing the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.level for r in results]
    xlabel = "concurrency (clients)" if results and results[0].mode == "concurrency" else "offered rate (requests/s)"
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(6, 5.5), dpi=100)
    ax1.plot(xs, [r.throughput for r in results], "o-", color="tab:blue")
    ax1.set_ylabel("throughput (images/s)")
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3)
    ax2.plot(
        xs,
        [r.latency_ms["p99"] if r.latency_ms["p99"] is not None else float("nan") for r in results],
        "s-",
        color="tab:red",
        label="p99",
    )
    ax2.plot(
        xs,
        [r.latency_ms["p50"] if r.latency_ms["p50"] is not None else float("nan") for r in results],
        "^--",
        color="tab:gray",
        label="p50",
    )
    ax2.set_ylabel("latency (ms)")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel(xlabel)
    ax2.legend()
    ax2.grid(alpha=0.3)
    if len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax2.set_xscale("log", base=2)
        ax2.set_xticks(xs, [f"{x:g}" for x in xs])
    fig.suptitle(title or "POST /classify under load")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write(path, buf.getvalue())
