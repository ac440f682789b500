"""What the serving benchmarks share: ImageNet-shaped artifacts, servers started and stopped, ten-crop load.

Used by ``bench.serve_bench``, ``bench.serve_precision`` and ``bench.kserve_bench``.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import torch

import resnet

REPO = Path(__file__).resolve().parent.parent
COLOUR_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "ihc.png")


def build_artifacts(arch: str, folder: Path) -> tuple[Path, Path]:
    """A checkpoint and its ONNX export as ``python -m export.onnx`` writes it (any batch, height and width; card in
    metadata), through the TorchScript exporter (faster to export than dynamo, the same graph contract)."""
    from export.onnx import export_model, save_proto

    torch.manual_seed(0)
    model = resnet.create_model(arch).eval()
    card = resnet.make_card(arch, provenance={"note": "benchmark: random weights"})
    pt = resnet.save_checkpoint(folder / f"{arch}.pt", model, card)
    onnx_path = folder / f"{arch}.onnx"
    proto, _ = export_model(model, card, "torchscript")
    save_proto(proto, onnx_path)
    return pt, onnx_path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, log: Path, timeout: float = 300) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd} not ready in {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def load(url: str, images: list[bytes], requests: int, concurrency: int) -> tuple[float, list[float]]:
    """``requests`` ten-crop requests from ``concurrency`` workers -> (wall seconds, per-request latencies)."""
    latencies: list[float] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            t0 = time.perf_counter()
            r = await client.post(url + "/classify", files=[("file", ("img", images[i % len(images)]))])
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        await client.post(url + "/classify", files=[("file", ("img", images[0]))])  # connection + first-call warm
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - t0, latencies


def raw_seconds(backend, batch: int, repeats: int, warm: bool = True) -> float:
    """Median seconds of one raw backend call on ``batch`` crops (after one warm call unless ``warm=False``)."""
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    if warm:
        backend.run(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.run(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
