"""The prepared GPU serving benchmark of issue 27: one run, side by side, under 8 minutes on an H200-class GPU.

    python -m bench.gpu_bench --work /tmp/gpu_bench [--wheels DIR] [--device cuda|cpu] [--arch resnet50]
                              [--c1-requests 64] [--c64-requests 1280] [--max-batch 320]

Rows (a ResNet with random weights, the sample photos as JPEG, ten-crop, loopback, one server up at a time):
the naive FastAPI + torch eager fp32 server (``bench/serve_naive.py`` on the device), ``python -m serve`` on the
checkpoint in fp16 with one worker and with the default workers (when ``python -m serve --help`` lists
``--workers``), with one worker and host preprocessing (``--device-preprocess off``, the A/B of the GPU-side crops;
not counted in the targets), on a GPU with twice the default workers too (is one process's Python still the wall?),
``--precision auto``, and the in-process ceiling (torch fp16 channels_last on already preprocessed
crops, batch 10 and the largest batch). Columns: images/s at c=1 and c=64, p50 at c=1, median GPU utilisation
sampled by ``nvidia-smi`` during c=64. Writes ``gpu_bench.json`` into ``--work`` (``--out`` too) and prints a table
and the issue's targets. On ``--device cpu`` (the test runs it tiny) fp16 becomes fp32, CUDA is hidden from the
servers and there is no utilisation.

A GPU machine may lack FastAPI, uvicorn, pydantic, python-multipart (and httpx for the load): ``--wheels DIR``
installs them with ``pip install --no-index --find-links DIR --target WORK/site`` (no network) and puts that folder
on ``sys.path`` and the servers' ``PYTHONPATH``. bench/gpu_bench.sh shows how to fill DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NEEDED = {"fastapi": "fastapi", "starlette": "starlette", "uvicorn": "uvicorn", "pydantic": "pydantic"}
NEEDED |= {"multipart": "python-multipart", "httpx": "httpx", "prometheus_client": "prometheus-client"}


def install_wheels(wheels: Path, target: Path) -> list[str]:
    """Install the missing serving packages from ``wheels`` into ``target`` (no index, no network); put ``target``
    first on ``sys.path`` and ``PYTHONPATH``. Returns the packages installed."""
    missing = [pkg for mod, pkg in NEEDED.items() if importlib.util.find_spec(mod) is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels)]
        subprocess.run([*cmd, "--target", str(target), *missing], check=True)
    if target.is_dir():
        sys.path.insert(0, str(target))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
        importlib.invalidate_caches()
    return missing


def build_checkpoint(arch: str, work: Path) -> Path:
    """A random-weights checkpoint of ``arch`` (speed does not depend on the weights); reused when present."""
    import torch

    import resnet

    pt = work / f"{arch}.pt"
    if not pt.exists():
        torch.manual_seed(0)
        resnet.save_checkpoint(pt, resnet.create_model(arch).eval(), resnet.make_card(arch))
    return pt


def jpeg_photos() -> list[bytes]:
    """The defaults benchmark's photos, re-encoded as JPEG (quality 90), as a client would upload them."""
    from PIL import Image

    from bench.defaults_bench import _images_and_rounds

    out = []
    for data in _images_and_rounds(1)[0]:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class GpuSampler:
    """``nvidia-smi`` utilisation samples (every 200 ms) while the block runs; median None without nvidia-smi."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.samples, self._proc = enabled, [], None

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]
            try:
                self._proc = subprocess.Popen(query, stdout=subprocess.PIPE, text=True)
            except OSError:
                return self
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:  # type: ignore[union-attr]
            if line.strip().split(",")[0].strip().isdigit():
                self.samples.append(int(line.strip().split(",")[0]))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def measure(url: str, images: list[bytes], c1: int, c64: int, gpu: bool) -> dict[str, Any]:
    """c=1 and c=64 ten-crop load on a ready server -> img/s, p50 at c=1, p50/p99 and utilisation at c=64."""
    from bench.defaults_bench import load

    asyncio.run(load(url, images, 8, 8))  # connections and first calls
    wall1, lat1 = asyncio.run(load(url, images, c1, 1))
    with GpuSampler(gpu) as sampler:
        wall64, lat64 = asyncio.run(load(url, images, c64, 64))
    q = statistics.quantiles(lat64, n=100)
    return {
        "c1": c1 / wall1,
        "c64": c64 / wall64,
        "p50_c1_ms": statistics.median(lat1) * 1e3,
        "p50_c64_ms": statistics.median(lat64) * 1e3,
        "p99_c64_ms": q[98] * 1e3,
        "gpu_util_c64": sampler.median,
    }


def served_row(name: str, cmd: list[str], work: Path, args: argparse.Namespace, gpu: bool) -> dict[str, Any]:
    """Start one server, measure it, stop it; a server that fails to start is a row with its error."""
    import httpx

    from bench.defaults_bench import start, stop
    from bench.serve_cold_start import free_port

    port = free_port()
    log = work / f"{name.replace(' ', '_')}.log"
    t0 = time.perf_counter()
    try:
        proc = start(cmd, port, log, timeout=args.start_timeout)
    except RuntimeError as e:
        return {"error": str(e)[-500:]}
    try:
        ready_s = time.perf_counter() - t0
        url = f"http://127.0.0.1:{port}"
        ready = {k: v for k, v in httpx.get(url + "/readyz", timeout=10).json().items() if k.startswith("preprocess")}
        return {"cmd": " ".join(cmd[2:]), "ready_s": ready_s, **ready, **measure(url, *args.load, gpu)}
    except Exception as e:  # a failed row is reported, the others still run
        return {"error": f"{type(e).__name__}: {e}"[:500]}
    finally:
        stop(proc)


def ceiling(pt: Path, images: list[bytes], device: str, batches: Sequence[int]) -> dict[str, dict[str, Any]]:
    """In-process torch (fp16 on CUDA, fp32 on the CPU), channels_last, on preprocessed ten-crops: img/s per batch."""
    import torch

    import resnet
    from resnet.runtime.crops import TEN_CROPS

    model, card = resnet.load_checkpoint(pt)
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = model.to(device, dtype=dtype, memory_format=torch.channels_last).eval()
    crops = torch.from_numpy(resnet.preprocess(images[0], card))
    rows = {}
    for n in batches:
        x = crops.repeat((n + len(crops) - 1) // len(crops), 1, 1, 1)[:n]
        x = x.to(device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            times = []
            for i in range(8):
                t0 = time.perf_counter()
                model(x).float().cpu()
                if i >= 3:  # the first calls pick kernels
                    times.append(time.perf_counter() - t0)
        rows[f"in-process batch {n}"] = {"img_s": n / TEN_CROPS / statistics.median(times)}
    return rows


def rows_to_run(pt: Path, device: str, max_batch: int) -> dict[str, list[str]]:
    """The served rows and their commands (``--workers`` only when this server has the flag)."""
    py = [sys.executable, "-m"]
    precision = "fp16" if device == "cuda" else "fp32"
    ours = [*py, "serve", "--model", str(pt), "--log-level", "info"]
    helptext = subprocess.run([*py, "serve", "--help"], cwd=REPO, capture_output=True, text=True).stdout
    workers = "--workers" in helptext
    rows = {"naive": [*py, "bench.serve_naive", "--model", str(pt), "--device", device]}
    rows[f"ours {precision} 1 worker"] = [*ours, "--precision", precision, *(["--workers", "1"] if workers else [])]
    if workers:
        rows[f"ours {precision} default workers"] = [*ours, "--precision", precision, "--workers", "0"]
    if workers and device == "cuda":  # twice the default: is one process's Python (~300 requests/s) still the wall?
        from serve.workers import worker_count

        n = 2 * worker_count(0)
        rows[f"ours {precision} {n} workers"] = [*ours, "--precision", precision, "--workers", str(n)]
    if "--device-preprocess" in helptext:  # the A/B of the GPU-side crops and staged copies: the host path
        host = ["--device-preprocess", "off", *(["--workers", "1"] if workers else [])]
        rows[f"ours {precision} 1 worker, host preprocessing"] = [*ours, "--precision", precision, *host]
    rows["ours auto"] = [*ours, "--precision", "auto"]
    return rows


def targets(rows: dict[str, dict[str, Any]], max_batch: int) -> dict[str, Any]:
    """Issue 27's done-means, from this run's rows (None where a row is missing)."""
    ours = {k: r for k, r in rows.items() if k.startswith("ours") and "c64" in r and not ("auto" in k or "host" in k)}
    best = max((r["c64"] for r in ours.values()), default=None)
    top = rows.get(f"in-process batch {max_batch}", {}).get("img_s")
    naive, auto = rows.get("naive", {}), rows.get("ours auto", {})
    util = [r.get("gpu_util_c64") for r in ours.values() if r.get("gpu_util_c64") is not None]
    return {
        "fp16_c64_over_ceiling": best / top if best and top else None,
        "c1_p50_le_naive": min(r["p50_c1_ms"] for r in ours.values()) <= naive["p50_c1_ms"]
        if ours and "p50_c1_ms" in naive
        else None,
        "gpu_util_c64_max": max(util) if util else None,
        "auto_over_best_c64": auto["c64"] / best if best and "c64" in auto else None,
    }


def table(rows: dict[str, dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    out = ["| what | c=1 img/s | c=64 img/s | p50 c=1 | p99 c=64 | GPU util c=64 |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        if "error" in r:
            out.append(f"| {name} | failed: {r['error'][:80]} | | | | |")
        elif "img_s" in r:
            out.append(f"| {name} | {r['img_s']:.1f} (in-process) | | | | |")
        else:
            util = "" if r["gpu_util_c64"] is None else f"{r['gpu_util_c64']:.0f}%"
            out.append(
                f"| {name} | {r['c1']:.1f} | {r['c64']:.1f} | {r['p50_c1_ms']:.1f} ms | {r['p99_c64_ms']:.0f} ms | {util} |"
            )
    return "\n".join(out)


def preprocessing(row: dict[str, Any]) -> str:
    """Where a served row cut its crops, and how its feed compared with the host path at load."""
    check = row.get("preprocess_check")
    return row["preprocess"] + (f" ({check})" if check else "")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Issue 27's GPU serving benchmark (one run, one JSON + a table).")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu_bench"), help="folder for the checkpoint, logs, JSON")
    p.add_argument("--wheels", type=Path, help="folder of wheels to install missing serving packages from")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--c1-requests", type=int, default=64, help="requests at concurrency 1")
    p.add_argument("--c64-requests", type=int, default=1280, help="requests at concurrency 64")
    p.add_argument("--max-batch", type=int, default=320, help="the in-process ceiling's largest batch (crops)")
    p.add_argument("--start-timeout", type=float, default=180, help="seconds a server may take to be ready")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    installed = install_wheels(args.wheels, args.work / "site") if args.wheels else []
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here (use --device cpu for a rehearsal)", file=sys.stderr)
        return 2
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the servers too
    images = jpeg_photos()
    pt = build_checkpoint(args.arch, args.work)
    args.load = (images, args.c1_requests, args.c64_requests)
    # the ceiling first (in-process, seconds): the reference every served row is read against, there even if the
    # run is stopped before its last row; then its cached GPU memory goes back before the servers start
    rows: dict[str, dict[str, Any]] = ceiling(pt, images, args.device, (10, args.max_batch))
    print(f"ceiling: {json.dumps(rows)}", flush=True)
    if args.device == "cuda":
        torch.cuda.empty_cache()
    for name, cmd in rows_to_run(pt, args.device, args.max_batch).items():
        rows[name] = served_row(name, cmd, args.work, args, args.device == "cuda")
        print(f"{name}: {json.dumps(rows[name])}", flush=True)
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    result = {"arch": args.arch, "device": args.device, "gpu": gpu, "torch": torch.__version__, "photos": len(images)}
    result |= {"installed": installed, "rows": rows, "targets": targets(rows, args.max_batch)}
    text = json.dumps(result, indent=2)
    for path in filter(None, (args.work / "gpu_bench.json", args.out)):
        path.write_text(text + "\n")
    print(f"\n{args.arch} (random weights), {len(images)} JPEG photos, ten-crop, loopback, {gpu or 'CPU'}\n")
    print(table(rows))
    print(
        "\npreprocessing (/readyz): "
        + "; ".join(f"{k}: {preprocessing(r)}" for k, r in rows.items() if "preprocess" in r)
    )
    print("\ntargets:", json.dumps(result["targets"]))
    return 1 if any("error" in r for r in rows.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
