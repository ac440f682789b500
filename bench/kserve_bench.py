"""KServe v2 protocol cost: the same server, model and photos through ``/classify`` and through ``/v2/.../infer``.

Three request kinds, interleaved in rounds so that load changes on a shared machine hit all of them alike:

- ``classify``: ``POST /classify`` multipart, one photo per request (ten-crop);
- ``v2 image``: ``POST /v2/models/{name}/infer`` with the photo as a BYTES input, binary tensor extension
  (what ``tritonclient.http`` sends), ten-crop probabilities back;
- ``v2 crops``: the same endpoint with the ten pre-processed FP32 crops (the client did the decoding).

``python -m bench.kserve_bench [--arch resnet18] [--requests 24] [--concurrency 4]`` prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

import resnet
from bench.serve_support import COLOUR_PHOTOS, build_artifacts, free_port, start, stop
from resnet.samples import sample_photo_paths


def v2_body(inputs: list[dict], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


async def burst(url: str, make, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """``requests`` calls of ``make(client, i)`` from ``concurrency`` workers -> (wall seconds, latencies)."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            t0 = time.perf_counter()
            r = await make(client, i)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=concurrency), timeout=600) as c:
        await make(c, 0)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        return time.perf_counter() - t0, latencies


def _binary_body(name: str, shape: list[int], datatype: str, blob: bytes) -> tuple[bytes, dict[str, str]]:
    """One input in the binary tensor extension: (body, headers)."""
    entry = {"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": len(blob)}}
    return v2_body([entry], [blob])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kserve_bench", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18", help="ImageNet network (random weights), default resnet18")
    p.add_argument("--requests", type=int, default=24, help="requests per kind per round")
    p.add_argument("--concurrency", type=int, default=4, help="concurrent clients")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _, onnx_path = build_artifacts(args.arch, folder)
        card = resnet.onnx_card.read_onnx_card(onnx_path)
        photos = {q.name: q for q in sample_photo_paths()}
        images = [photos[n].read_bytes() for n in COLOUR_PHOTOS if n in photos]
        crops = [np.ascontiguousarray(resnet.preprocess(img, card, crops="ten")) for img in images]
        name = card.name
        image_bodies = [_binary_body("image", [1], "BYTES", struct.pack("<I", len(img)) + img) for img in images]
        crop_bodies = [_binary_body("input", list(c.shape), "FP32", c.tobytes()) for c in crops]
        kinds = {
            "classify": lambda c, i: c.post("/classify", files=[("file", ("img", images[i % len(images)]))]),
            "v2 image": lambda c, i: c.post(
                f"/v2/models/{name}/infer",
                content=image_bodies[i % len(images)][0],
                headers=image_bodies[i % len(images)][1],
            ),
            "v2 crops": lambda c, i: c.post(
                f"/v2/models/{name}/infer",
                content=crop_bodies[i % len(images)][0],
                headers=crop_bodies[i % len(images)][1],
            ),
        }
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start(
            [sys.executable, "-m", "serve", "--model", str(onnx_path), "--port", str(port), "--log-level", "warning"],
            port,
            folder / "serve.log",
        )
        try:
            walls = {k: 0.0 for k in kinds}
            lats: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(args.rounds):
                for kind, make in kinds.items():
                    wall, lat = asyncio.run(burst(url, make, args.requests, args.concurrency))
                    walls[kind] += wall
                    lats[kind] += lat
        finally:
            stop(proc)
    total = args.requests * args.rounds
    base = total / walls["classify"]
    print(f"{args.arch}, ONNX Runtime CPU, ten-crop, {total} requests per kind, concurrency {args.concurrency}\n")
    print("| request kind | images/s | p50 latency (ms) | throughput vs /classify |")
    print("|---|---|---|---|")
    for kind in kinds:
        rate = total / walls[kind]
        print(f"| {kind} | {rate:.2f} | {statistics.median(lats[kind]) * 1e3:.0f} | {rate / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
