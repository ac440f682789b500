"""``python -m train.plot RUN... -o curves.png``: training and validation error of several runs on one plot.

The style of the paper's Fig. 4 and 6: thin lines = training error, bold lines = validation error, one colour per run.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path

import resnet
from resnet import UserError
from resnet.atomic import atomic_write

from .cli import _Parser
from .runlog import read_metrics


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m train.plot",
        description=__doc__.splitlines()[0].strip("`"),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    p.add_argument("-o", "--output", default="error_curves.png", help="PNG file to write")
    p.add_argument("--labels", default=None, help="comma-separated legend labels, one per run (default: folder names)")
    p.add_argument("--title", default=None, help="plot title")
    p.add_argument("--ymax", type=float, default=None, help="upper limit of the error axis (percent)")
    p.add_argument("--smooth", type=int, default=1, help="moving average over this many training log points")
    return p


def load_curves(run: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(training error points, validation error points) of one run folder."""
    if not (run / "metrics.jsonl").is_file():
        raise UserError(f"{run} is not a run folder (no metrics.jsonl)")
    recs = read_metrics(run)
    train = [(r["step"], float(r["err"])) for r in recs if r.get("kind") == "train" and "err" in r]
    val = [(r["step"], float(r["top1_err"])) for r in recs if r.get("kind") == "val" and "top1_err" in r]
    if not train and not val:
        raise UserError(f"{run}/metrics.jsonl has no training or validation records yet")
    # a resumed run may log some steps twice: keep the latest record of each step
    return sorted(dict(train).items()), sorted(dict(val).items())


def _smooth(values: list[float], k: int) -> list[float]:
    if k <= 1:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_runs(
    runs: Sequence[Path],
    output: Path,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    ymax: float | None = None,
    smooth: int = 1,
) -> Path:
    """Draw the curves of ``runs`` on one PNG (written atomically) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels or [r.name for r in runs])
    if len(labels) != len(runs):
        raise UserError(f"{len(labels)} labels for {len(runs)} runs")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for i, (run, label) in enumerate(zip(runs, labels)):
        train, val = load_curves(run)
        color = f"C{i % 10}"
        if train:
            ax.plot([s for s, _ in train], _smooth([e for _, e in train], smooth), color=color, lw=0.8, alpha=0.8)
        if val:
            ax.plot([s for s, _ in val], [e for _, e in val], color=color, lw=2.4, label=label)
        elif train:
            ax.plot([], [], color=color, lw=2.4, label=label)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    if ymax is not None:
        ax.set_ylim(0, ymax)
    else:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(title="thin: train, bold: val", fontsize=8, title_fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write(output, buf.getvalue())


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    out = plot_runs([Path(r) for r in args.runs], Path(args.output), labels, args.title, args.ymax, args.smooth)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Plot; one-line errors with the exit codes of docs/DESIGN.md §5."""
    return resnet.run_cli(_main, argv, prog="train.plot")


if __name__ == "__main__":
    raise SystemExit(main())
