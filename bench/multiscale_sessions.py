"""Does pinning a dynamic-H/W graph's height and width recover the fixed-size speed? (serve.engine.backends)

One ImageNet ResNet (random weights: speed does not depend on them) exported twice with the TorchScript exporter:
input ``[N, 3, 224, 224]`` (fixed size) and ``[N, 3, H, W]`` (H, W symbolic "height"/"width", as export.onnx
writes). Three ONNX Runtime CPU sessions, made as the server makes them (``resnet.runtime.ort.session_options``):

- ``fixed``: the fixed-size graph;
- ``dynamic``: the dynamic graph, plain (what multi-scale views run on);
- ``pinned``: the dynamic graph with ``add_free_dimension_override_by_name("height"/"width", 224)`` (what the
  server runs ten/centre crops on when multi-scale is on).

Each is timed on the same batch (default 10 crops of 224, one ten-crop image), interleaved over rounds so a busy
machine slows all alike; the median ms per batch is printed as a Markdown table for bench/RESULTS.md.

``python -m bench.multiscale_sessions [--arch resnet50] [--batch 10] [--rounds 6] [--repeats 4] [--threads 0]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import resnet


def export(arch: str, folder: Path, any_size: bool) -> Path:
    """The TorchScript export of ``arch`` with dynamic batch, and dynamic height/width when ``any_size``."""
    torch.manual_seed(0)
    model = resnet.create_model(arch).eval()
    out = folder / f"{arch}.{'dynamic' if any_size else 'fixed'}.onnx"
    axes = {0: "batch", 2: "height", 3: "width"} if any_size else {0: "batch"}
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 224, 224),
        str(out),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": axes, "logits": {0: "batch"}},
        dynamo=False,
    )
    return out


def sessions(fixed: Path, dynamic: Path, threads: int, size: int) -> dict[str, Any]:
    """The three sessions, with the server's session options."""
    import onnxruntime as ort

    from resnet.runtime.ort import rss_mib, session_options

    pinned = session_options(threads)
    pinned.add_free_dimension_override_by_name("height", size)
    pinned.add_free_dimension_override_by_name("width", size)
    made: dict[str, Any] = {}
    for name, path, opts in (
        ("fixed", fixed, session_options(threads)),
        ("dynamic", dynamic, session_options(threads)),
    ):
        before = rss_mib()
        made[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        print(f"{name} session: {rss_mib() - before:+.0f} MiB resident")
    before = rss_mib()
    made["pinned"] = ort.InferenceSession(str(dynamic), pinned, providers=["CPUExecutionProvider"])
    print(f"pinned session: {rss_mib() - before:+.0f} MiB resident")
    return made


def measure(runs: dict[str, Any], x: np.ndarray, rounds: int, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, process CPU) seconds per run of each session, interleaved: every round runs each ``repeats`` times.
    On a shared machine the CPU seconds and the fastest wall time move least with other jobs' load."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for s in runs.values():  # warm-up
        s.run(None, {"input": x})
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                runs[name].run(None, {"input": x})
                times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.multiscale_sessions", description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch", type=int, default=10, help="crops per batch (10: one ten-crop image)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all CPUs)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fixed, dynamic = export(args.arch, Path(tmp), False), export(args.arch, Path(tmp), True)
        runs = sessions(fixed, dynamic, args.threads, 224)
        x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224), dtype=np.float32)
        ref = runs["fixed"].run(None, {"input": x})[0]
        for name, s in runs.items():  # same numbers from all three
            assert np.abs(s.run(None, {"input": x})[0] - ref).max() < 1e-3, name
        times = measure(runs, x, args.rounds, args.repeats)

    def stats(t: list[tuple[float, float]]) -> tuple[float, float, float]:
        return min(w for w, _ in t), statistics.median(w for w, _ in t), statistics.median(c for _, c in t)

    base = stats(times["fixed"])
    head = f"| model | session | fastest ms / batch of {args.batch} | median ms | median CPU ms"
    print(head + " | vs fixed (fastest, CPU) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, t in times.items():
        best, med, cpu = stats(t)
        row = f"| {args.arch} | {name} | {best * 1e3:.1f} | {med * 1e3:.1f} | {cpu * 1e3:.1f} |"
        print(f"{row} {best / base[0]:.3f}, {cpu / base[2]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
