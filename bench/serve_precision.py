"""Serving by precision, side by side in one run: naive FastAPI + torch, ours fp32 ORT, ours int8 ORT, ours torch bf16.

Run through ``python -m bench.serve_bench --precisions --arch resnet18 resnet50``. Per network (ImageNet ResNet,
random weights: speed does not depend on the weights, and the INT8 figures are agreement with fp32 only):
the fp32 ONNX export, the INT8 QDQ graph from ``python -m export.quantize`` (its gate report gives the agreement;
random weights may fail the 99% gate, then its ``.rejected`` graph is timed, which is the same graph), and four
servers up at once. Rounds interleave, per server, concurrency-1 requests (for int8 each paired with one raw
in-process int8 ten-crop call) and a concurrency-8 burst, so load from other jobs hits every column alike.
Targets: int8 @c8 >= 2.5x our fp32 on ResNet-50 and >= 5x naive; int8 p50 @c1 <= 1.15x the raw int8 ten-crop.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from resnet.artifacts import rejected_path, report_path
from resnet.runtime.report import ParityReport
from resnet.samples import sample_photo_paths

from .serve_support import COLOUR_PHOTOS, REPO, build_artifacts, free_port, load, raw_seconds, start, stop

GATE_KEYS = ("images", "top1_agreement", "top5_agreement", "cosine_min")
KINDS = ("naive torch fp32", "ours fp32 ORT", "ours int8 ORT", "ours torch bf16")


def build_int8(pt: Path, folder: Path) -> tuple[Path, dict[str, Any]]:
    """``export.quantize`` on the checkpoint (calibrated on the bundled photos); the graph and its gate report."""
    out = folder / f"{pt.stem}.int8.onnx"
    cmd = [sys.executable, "-m", "export.quantize", str(pt), "-o", str(out), "--calib", "samples", "--limit", "4"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if p.returncode not in (0, 3):
        raise RuntimeError(f"export.quantize failed ({p.returncode}): {p.stderr[-1500:]}")
    report = ParityReport.read(report_path(out)).data
    if p.returncode == 3:  # random weights: the gate may refuse it; the graph (what we time) is the same
        shutil.copy(rejected_path(out), out)
    return out, report


def server_commands(pt: Path, onnx_fp32: Path, onnx_int8: Path, threads: int) -> dict[str, list[str]]:
    ours = [sys.executable, "-m", "serve", "--log-level", "warning"] + (["--threads", str(threads)] if threads else [])
    return {
        "naive torch fp32": [sys.executable, "-m", "bench.serve_naive", "--model", str(pt)],
        "ours fp32 ORT": [*ours, "--model", str(onnx_fp32)],
        "ours int8 ORT": [*ours, "--model", str(onnx_int8)],
        "ours torch bf16": [*ours, "--model", str(pt), "--precision", "bf16"],
    }


def bench_precisions(arch: str, folder: Path, requests: int, rounds: int, threads: int) -> dict[str, Any]:
    """Throughput @c8 and p50 @c1 of the four servers, and the raw in-process int8 ten-crop, interleaved."""
    from serve.engine.backends import load_backend

    pt, onnx_fp32 = build_artifacts(arch, folder)
    onnx_int8, report = build_int8(pt, folder)
    photos = {p.name: p for p in sample_photo_paths()}
    images = [photos[n].read_bytes() for n in COLOUR_PHOTOS if n in photos]
    procs, urls = {}, {}
    try:
        for kind, cmd in server_commands(pt, onnx_fp32, onnx_int8, threads).items():
            port = free_port()
            procs[kind] = start([*cmd, "--port", str(port)], port, folder / f"{arch}-{kind.replace(' ', '_')}.log")
            urls[kind] = f"http://127.0.0.1:{port}"
        raw = load_backend(onnx_int8, "onnxruntime", threads=threads)
        raw_seconds(raw, 10, 1)  # warm
        per_round = max(8, requests // rounds)
        wall = dict.fromkeys(KINDS, 0.0)
        lat: dict[str, list[float]] = {k: [] for k in KINDS}
        lat_raw: list[float] = []
        for _ in range(rounds):
            for kind in KINDS:
                for _ in range(3):
                    lat[kind] += asyncio.run(load(urls[kind], images, 1, 1))[1]
                    if kind == "ours int8 ORT":
                        lat_raw.append(raw_seconds(raw, 10, 1, warm=False))
                wall[kind] += asyncio.run(load(urls[kind], images, per_round, 8))[0]
    finally:
        for proc in procs.values():
            stop(proc)
    n = per_round * rounds
    return {
        "img_per_s_c8": {k: n / wall[k] for k in KINDS},
        "p50_c1_ms": {k: statistics.median(lat[k]) * 1e3 for k in KINDS},
        "raw_int8_10crop_ms": statistics.median(lat_raw) * 1e3,
        "int8_gate": {"passed": report.get("passed"), **{k: report.get("metrics", {}).get(k) for k in GATE_KEYS}},
        "requests": n,
    }


def print_tables(rows: list[tuple[str, dict[str, Any]]]) -> None:
    """The Markdown tables for bench/RESULTS.md."""
    print("| model | " + " | ".join(f"{k} img/s @c8" for k in KINDS) + " | int8 / ours fp32 | int8 / naive |")
    print("|---|" + "---:|" * (len(KINDS) + 2))
    for arch, r in rows:
        t = r["img_per_s_c8"]
        cells = " | ".join(f"{t[k]:.2f}" for k in KINDS)
        fp32, naive = t["ours int8 ORT"] / t["ours fp32 ORT"], t["ours int8 ORT"] / t["naive torch fp32"]
        print(f"| {arch} (random weights) | {cells} | {fp32:.2f}x | {naive:.2f}x |")
    print("\n| model | " + " | ".join(f"{k} p50 @c1 ms" for k in KINDS) + " | raw int8 10-crop ms | int8 p50 / raw |")
    print("|---|" + "---:|" * (len(KINDS) + 2))
    for arch, r in rows:
        p = r["p50_c1_ms"]
        cells = " | ".join(f"{p[k]:.0f}" for k in KINDS)
        ratio = p["ours int8 ORT"] / r["raw_int8_10crop_ms"]
        print(f"| {arch} (random weights) | {cells} | {r['raw_int8_10crop_ms']:.0f} | {ratio:.2f} |")
    print("\nINT8 vs fp32 agreement (random weights: agreement only, no accuracy):\n")
    for arch, r in rows:
        print(f"- {arch}: {json.dumps(r['int8_gate'])} ({r['requests']} requests per server @c8)")
