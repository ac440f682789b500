"""Serving benchmark: all ratios measured side by side in one run on this machine.

For each network (an ImageNet ResNet with random weights: speed does not depend on the weights), exported to ONNX:

1. efficiency: ``python -m serve`` throughput at concurrency 8 over the raw in-process backend's throughput at the
   batch size the server actually ran (target >= 0.90), and the server's p50 latency at concurrency 1 over one raw
   10-crop inference (target <= 1.15);
2. against the naive baseline (``bench/serve_naive.py``: FastAPI + torch per request, no batching) at
   concurrency 8, same model and images (target >= 1.8x throughput).

``python -m bench.serve_bench --arch resnet18 resnet50 [--requests 32]`` prints a Markdown table for RESULTS.md;
``--precisions`` compares naive, ours fp32 ORT, ours int8 ORT and ours torch bf16 instead (bench/serve_precision.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from resnet.samples import sample_photo_paths

from .serve_precision import bench_precisions, print_tables
from .serve_support import COLOUR_PHOTOS, build_artifacts, free_port, load, raw_seconds, start, stop


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_arch(arch: str, folder: Path, requests: int, threads: int, rounds: int = 3) -> dict[str, float]:
    """Interleaved rounds (server burst, raw backend, naive burst, latency pairs) so that a load change on a shared
    machine hits both sides of each ratio alike; each ratio is computed from the summed times of all rounds."""
    from serve.engine.backends import load_backend

    pt, onnx_path = build_artifacts(arch, folder)
    photos = {p.name: p for p in sample_photo_paths()}
    images = [photos[n].read_bytes() for n in COLOUR_PHOTOS if n in photos]
    port, naive_port = free_port(), free_port()
    url, naive_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{naive_port}"
    cmd = [sys.executable, "-m", "serve", "--model", str(onnx_path), "--port", str(port), "--log-level", "warning"]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = start(cmd, port, folder / f"{arch}-serve.log")
    naive = start(
        [sys.executable, "-m", "bench.serve_naive", "--model", str(pt), "--port", str(naive_port)],
        naive_port,
        folder / f"{arch}-naive.log",
    )
    backend = load_backend(onnx_path, "onnxruntime", threads=threads)
    x10 = np.random.default_rng(0).standard_normal((10, 3, 224, 224), dtype=np.float32)
    backend.run(x10)
    per_round = max(8, requests // rounds)
    server_wall = raw_wall = naive_wall = 0.0
    server_cpu = raw_cpu = naive_cpu = 0.0
    batches: list[float] = []
    lat_server: list[float] = []
    lat_raw: list[float] = []
    try:
        for _ in range(rounds):
            for _ in range(3):  # latency at concurrency 1, alternating server and raw
                _, lat = asyncio.run(load(url, images, 1, 1))
                lat_server += lat
                lat_raw.append(raw_seconds(backend, 10, 1, warm=False))
            before, cpu0 = httpx.get(url + "/metrics").text, cpu_seconds(proc.pid)
            wall, _ = asyncio.run(load(url, images, per_round, 8))
            server_wall, server_cpu = server_wall + wall, server_cpu + cpu_seconds(proc.pid) - cpu0
            batch = _phase_mean_batch(before, httpx.get(url + "/metrics").text)
            batches.append(batch)
            size = int(round(batch))
            n_batches = per_round * 10 / size  # the same number of crops, in batches of the server's mean size
            cpu0 = time.process_time()
            raw_wall += raw_seconds(backend, size, max(1, round(n_batches))) * n_batches
            raw_cpu += (time.process_time() - cpu0) * n_batches / (max(1, round(n_batches)) + 1)
            cpu0 = cpu_seconds(naive.pid)
            wall, _ = asyncio.run(load(naive_url, images, per_round, 8))
            naive_wall, naive_cpu = naive_wall + wall, naive_cpu + cpu_seconds(naive.pid) - cpu0
    finally:
        stop(proc)
        stop(naive)
    n = per_round * rounds
    res = {
        "server_img_per_s_c8": n / server_wall,
        "raw_img_per_s": n / raw_wall,
        "raw_batch": statistics.mean(batches),
        "naive_img_per_s_c8": n / naive_wall,
        "server_p50_c1_s": statistics.median(lat_server),
        "raw_10crop_s": statistics.median(lat_raw),
        "server_cpu_per_img": server_cpu / n,
        "raw_cpu_per_img": raw_cpu / n,
        "naive_cpu_per_img": naive_cpu / n,
    }
    res["cpu_efficiency"] = res["raw_cpu_per_img"] / res["server_cpu_per_img"]
    res["cpu_vs_naive"] = res["naive_cpu_per_img"] / res["server_cpu_per_img"]
    res["efficiency_throughput"] = res["server_img_per_s_c8"] / res["raw_img_per_s"]
    res["efficiency_latency"] = res["server_p50_c1_s"] / res["raw_10crop_s"]
    res["vs_naive"] = res["server_img_per_s_c8"] / res["naive_img_per_s_c8"]
    return res


def _phase_mean_batch(before: str, after: str) -> float:
    def read(text: str) -> tuple[float, float]:
        s = c = 0.0
        for line in text.splitlines():
            if line.startswith("resnet_serve_padded_batch_size_sum "):
                s = float(line.split()[-1])
            elif line.startswith("resnet_serve_padded_batch_size_count "):
                c = float(line.split()[-1])
        return s, c

    (s0, c0), (s1, c1) = read(before), read(after)
    return (s1 - s0) / max(1.0, c1 - c0)


def thread_sweep(arch: str, folder: Path) -> None:
    """Raw ONNX Runtime CPU time per crop at batch 10 and 64 for each intra-op thread count (1 .. all CPUs)."""
    from resnet.runtime.ort import cpu_threads
    from serve.engine.backends import load_backend

    _, onnx_path = build_artifacts(arch, folder)
    print(f"\n| {arch} ORT CPU intra-op threads | ms/crop @ batch 10 | ms/crop @ batch 64 |\n|---:|---:|---:|")
    for n in sorted({1, max(1, cpu_threads() // 2), cpu_threads()}):
        backend = load_backend(onnx_path, "onnxruntime", threads=n)
        t10, t64 = raw_seconds(backend, 10, 5) / 10, raw_seconds(backend, 64, 2) / 64
        print(f"| {n} | {t10 * 1e3:.1f} | {t64 * 1e3:.1f} |", flush=True)


def per_arch(archs: list[str], bench: Callable[[str, Path], Any]) -> list[tuple[str, Any]]:
    """Run ``bench(arch, folder)`` for each network in one temp folder, logging each; ends with the load average."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve_bench_") as tmp:
        for arch in archs:
            t0 = time.perf_counter()
            r = bench(arch, Path(tmp))
            print(f"{arch}: {r}  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            rows.append((arch, r))
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs\n")
    return rows


def precisions(args: argparse.Namespace) -> int:
    """Serving by precision (bench/serve_precision.py): one run, all servers side by side."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the servers (finally)
    rows = per_arch(args.arch, lambda arch, tmp: bench_precisions(arch, tmp, args.requests, args.rounds, args.threads))
    print_tables(rows)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["resnet18", "resnet50"], help="ImageNet networks to serve")
    p.add_argument("--requests", type=int, default=24, help="ten-crop requests per concurrency-8 phase, all rounds")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (server, raw, naive) per network")
    p.add_argument("--threads", type=int, default=0, help="backend threads for server and raw (0 = all CPUs)")
    p.add_argument("--thread-sweep", action="store_true", help="only measure ORT CPU time per crop vs threads")
    p.add_argument(
        "--precisions",
        action="store_true",
        help="naive vs ours fp32 ORT vs ours int8 ORT vs ours torch bf16, side by side (bench/serve_precision.py)",
    )
    args = p.parse_args(argv)
    if args.precisions:
        return precisions(args)
    if args.thread_sweep:
        with tempfile.TemporaryDirectory(prefix="serve_bench_") as tmp:
            for arch in args.arch:
                thread_sweep(arch, Path(tmp))
        return 0
    rows = per_arch(args.arch, lambda arch, tmp: bench_arch(arch, tmp, args.requests, args.threads, args.rounds))
    print("Wall clock (ratios from interleaved rounds):\n")
    print(
        "| model | server img/s @c8 | raw img/s @ same batch (mean batch) | throughput efficiency | "
        "server p50 @c1 ms | raw 10-crop ms | latency ratio | naive img/s @c8 | vs naive |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arch, r in rows:
        print(
            f"| {arch} | {r['server_img_per_s_c8']:.2f} | {r['raw_img_per_s']:.2f} ({r['raw_batch']:.0f}) | "
            f"{r['efficiency_throughput']:.2f} | {r['server_p50_c1_s'] * 1e3:.0f} | {r['raw_10crop_s'] * 1e3:.0f} | "
            f"{r['efficiency_latency']:.2f} | {r['naive_img_per_s_c8']:.2f} | {r['vs_naive']:.2f}x |"
        )
    print("\nCPU seconds per ten-crop image (the processes' own user+system time; unaffected by other jobs):\n")
    print("| model | server | raw backend | CPU efficiency (raw/server) | naive | naive/server |")
    print("|---|---:|---:|---:|---:|---:|")
    for arch, r in rows:
        print(
            f"| {arch} | {r['server_cpu_per_img']:.3f} | {r['raw_cpu_per_img']:.3f} | {r['cpu_efficiency']:.2f} | "
            f"{r['naive_cpu_per_img']:.3f} | {r['cpu_vs_naive']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
