"""What a run leaves for people: args.json, metrics.jsonl, TensorBoard scalars, a progress bar or plain lines.

Only rank 0 writes; the other ranks get a ``RunLog`` that does nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


class RunLog:
    """Metrics sink of one run folder."""

    def __init__(self, folder: Path, enabled: bool, total: int, progress: str = "auto", tensorboard: bool = True):
        self.folder, self.enabled, self.total = folder, enabled, total
        self.bar = None
        self.tb = None
        self.t0 = time.time()
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.metrics = (folder / "metrics.jsonl").open("a", encoding="utf-8")
        use_bar = progress == "bar" or (progress == "auto" and sys.stderr.isatty())
        if use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="it", dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(folder / "tb"))
            except ImportError:  # tensorboard is a dependency, but a broken install should not stop training
                self.info("tensorboard is not installed: no TensorBoard scalars")

    def write_args(self, args: dict[str, Any]) -> None:
        if self.enabled:
            (self.folder / "args.json").write_text(json.dumps(_jsonable(args), indent=2) + "\n", encoding="utf-8")

    def info(self, msg: str) -> None:
        """A human line: through tqdm when a bar is shown, else on stdout."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def record(self, kind: str, step: int, **values: Any) -> None:
        """One JSONL record and matching TensorBoard scalars (``kind/name``)."""
        if not self.enabled:
            return
        rec = {"kind": kind, "step": step, "time": round(time.time() - self.t0, 3), **values}
        self.metrics.write(json.dumps(_jsonable(rec)) + "\n")
        self.metrics.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def progress(self, step: int, postfix: str) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(postfix, refresh=True)

    def start_at(self, step: int) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.metrics.close()


def read_metrics(folder: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (a torn last line from a killed run is skipped)."""
    out = []
    path = Path(folder) / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
