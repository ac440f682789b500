"""Serving at the default flags, side by side in one run: what a new user gets from each way of serving ResNet.

    python -m bench.defaults_bench --work /tmp/defaults_bench [--arch resnet50] [--requests 8] [--rounds 2]

Rows (an ImageNet ResNet with random weights: speed does not depend on the weights): the naive FastAPI + torch
eager server (``bench/serve_naive.py``), ``python -m serve`` on the fp32 ONNX export, on the INT8 graph, on the
checkpoint in torch bf16, and on the folder with ``--precision auto`` (the checkpoint and every artifact whose gate
passed); and in-process ONNX Runtime fp32 / int8 on the same photos, decode + preprocess + inference of one
ten-crop image (the honest ceiling of a served request) and inference alone. Columns: images/s at concurrency 1
and 8, p50 latency at concurrency 1. Servers are all up at once and measured in interleaved rounds, each after its
background warm-up, so load from other jobs hits every row alike. Then the cold start (launch to /readyz 200) with
the default flags and with ``--batch-sizes 1``, alternating.

Targets checked and printed: default cold start <= 1.5x the ``--batch-sizes 1`` one; auto within 5% of the best
single precision it could have chosen at c=1 and c=8; INT8 served p50 at c=1 <= 1.2x in-process decode +
preprocess + inference. Artifacts are built once into ``--work`` and reused (the INT8 calibration takes minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench.serve_cold_start import cold_start, free_port
from resnet.samples import sample_photo_paths

REPO = Path(__file__).resolve().parent.parent
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "ihc.png",
    "hubble_deep_field.jpg",
)
SERVERS = ("naive FastAPI + torch eager", "serve fp32 ONNX", "serve INT8", "serve torch bf16", "serve DIR auto")
BASELINE = "(baseline)"  # a row served by --baseline's checkout
WORKERS_ROW = "serve fp32 ONNX --workers 2"  # the one-process / several-process A/B: asked for by --servers only


def build(arch: str, work: Path, int8_too: bool = True) -> tuple[Path, Path, Path]:
    """(run folder with checkpoint, gated fp32 ONNX and, if its gate passed, the INT8 graph; the INT8 graph to serve
    directly; the checkpoint), made with the project's own tools; reused when present. ``int8_too=False`` skips
    the INT8 calibration (minutes) when no row needs it."""
    run, int8_dir = work / arch, work / f"{arch}-int8"
    run.mkdir(parents=True, exist_ok=True)
    int8_dir.mkdir(exist_ok=True)
    pt, onnx, int8 = run / f"{arch}.pt", run / f"{arch}.onnx", run / f"{arch}.int8.onnx"
    py = [sys.executable, "-m"]
    if not pt.exists():
        code = (
            "import torch, resnet, sys; torch.manual_seed(0); m = resnet.create_model(sys.argv[1]).eval(); "
            "resnet.save_checkpoint(sys.argv[2], m, resnet.make_card(sys.argv[1], "
            "provenance={'note': 'benchmark: random weights'}))"
        )
        subprocess.run([sys.executable, "-c", code, arch, str(pt)], cwd=REPO, check=True)
    if not onnx.exists():
        cmd = [*py, "export.onnx", str(pt), "-o", str(onnx), "--exporter", "torchscript", "--limit", "4"]
        subprocess.run(cmd, cwd=REPO, check=True)
    served = int8_dir / int8.name
    if int8_too and not served.exists():
        cmd = [*py, "export.quantize", str(pt), "-o", str(int8), "--calib", "samples", "--limit", "4"]
        p = subprocess.run(cmd, cwd=REPO, check=False)
        if p.returncode not in (0, 3):
            raise SystemExit(f"export.quantize failed ({p.returncode})")
        # random weights may fail the INT8 agreement gate: then the folder has no INT8 candidate (auto must not
        # serve it), and the graph is still timed directly (the same graph)
        shutil.copy(int8 if int8.exists() else int8.with_name(int8.name + ".rejected"), served)
    return run, served, pt


def start(cmd: list[str], port: int, log: Path, timeout: float = 600, cwd: Path = REPO) -> subprocess.Popen:
    """Launch from ``cwd`` (another checkout for a baseline row); return once /readyz is 200 and no batch shape is
    left cold (our server's metric; naive has none)."""
    proc = subprocess.Popen([*cmd, "--port", str(port)], cwd=cwd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                r = httpx.get(url + "/metrics", timeout=2)
                if r.status_code != 200 or 'resnet_serve_batch_shapes{state="cold"} 0.0' in r.text:
                    return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"{cmd} not ready in {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def load(url: str, images: list[bytes], requests: int, concurrency: int) -> tuple[float, list[float]]:
    """``requests`` one-image ten-crop requests from ``concurrency`` workers -> (wall seconds, latencies)."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            t0 = time.perf_counter()
            r = await client.post(url + "/classify", files=[("file", ("img", images[i % len(images)]))])
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency), timeout=600) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - t0, latencies


def in_process(model: Path, images: list[bytes], rounds: int) -> tuple[float, float]:
    """Median seconds per image in one process: (decode + preprocess + ten-crop inference, inference alone)."""
    from resnet.preprocess import preprocess
    from serve.engine.backends import load_backend

    backend = load_backend(model, "onnxruntime")
    backend.run(preprocess(images[0], backend.card))
    whole, infer = [], []
    for _ in range(rounds):
        for data in images:
            t0 = time.perf_counter()
            crops = preprocess(data, backend.card)
            t1 = time.perf_counter()
            backend.run(crops)
            t2 = time.perf_counter()
            whole.append(t2 - t0)
            infer.append(t2 - t1)
    return statistics.median(whole), statistics.median(infer)


def serve_rows(
    run: Path,
    int8: Path,
    pt: Path,
    work: Path,
    requests: int,
    rounds: int,
    kinds: Sequence[str] = SERVERS,
    baseline: Path | None = None,
) -> dict[str, dict]:
    """Each row's images/s at c=1 and c=8 and p50 at c=1, servers up at once and measured in interleaved rounds.
    ``baseline``: another checkout (say, the last release's) whose fp32 ONNX and INT8 rows run beside ours."""
    serve = [sys.executable, "-m", "serve", "--log-level", "info"]
    commands = {
        "naive FastAPI + torch eager": [sys.executable, "-m", "bench.serve_naive", "--model", str(pt)],
        "serve fp32 ONNX": [*serve, "--model", str(run / f"{run.name}.onnx")],
        WORKERS_ROW: [*serve, "--model", str(run / f"{run.name}.onnx"), "--workers", "2"],
        "serve INT8": [*serve, "--model", str(int8)],
        "serve torch bf16": [*serve, "--model", str(pt), "--precision", "bf16"],
        "serve DIR auto": [*serve, "--model", str(run), "--precision", "auto"],
    }
    commands = {k: v for k, v in commands.items() if k in kinds}
    cwd = dict.fromkeys(commands, REPO)
    if baseline is not None:
        for kind in ("serve fp32 ONNX", "serve INT8"):
            if kind in commands:
                commands[f"{kind} {BASELINE}"], cwd[f"{kind} {BASELINE}"] = commands[kind], baseline
    images, _ = _images_and_rounds(rounds)
    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    c1: dict[str, list[float]] = {k: [] for k in commands}
    c8: dict[str, float] = dict.fromkeys(commands, 0.0)
    try:
        for kind, cmd in commands.items():  # one at a time: each server's start-up timing runs alone
            port = free_port()
            procs[kind] = start(cmd, port, work / f"{kind.replace(' ', '_')}.log", cwd=cwd[kind])
            urls[kind] = f"http://127.0.0.1:{port}"
            asyncio.run(load(urls[kind], images, 2, 1))  # connection and first-call warm
        for _ in range(rounds):
            for kind in commands:
                c1[kind] += asyncio.run(load(urls[kind], images, requests, 1))[1]
                c8[kind] += asyncio.run(load(urls[kind], images, requests, 8))[0]
    finally:
        for proc in procs.values():
            stop(proc)
    auto_log = work / "serve_DIR_auto.log"
    lines = auto_log.read_text().splitlines() if "serve DIR auto" in commands else []
    chosen = next((ln for ln in lines if '"chosen": true' in ln), "?")
    n = requests * rounds
    return {
        k: {"c1": len(c1[k]) / sum(c1[k]), "c8": n / c8[k], "p50": statistics.median(c1[k]), "auto": chosen}
        for k in commands
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.defaults_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/defaults_bench"), help="artifacts and server logs")
    p.add_argument("--arch", default="resnet50", help="ImageNet network (random weights)")
    p.add_argument("--requests", type=int, default=8, help="requests per server, concurrency and round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the servers")
    p.add_argument("--cold-runs", type=int, default=2, help="cold starts per configuration")
    p.add_argument(
        "--servers",
        nargs="+",
        choices=(*SERVERS, WORKERS_ROW),
        default=list(SERVERS),
        help="only these server rows (an A/B); the in-process rows, cold starts and targets need all of them; "
        f"'{WORKERS_ROW}' is the fp32 ONNX row served by two processes (serve --workers 2)",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this repository (git worktree add DIR COMMIT): its fp32 ONNX and INT8 rows are "
        "served beside ours from the same artifacts, an A/B across code versions",
    )
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the servers (finally)
    started = time.perf_counter()
    int8_too = set(args.servers) == set(SERVERS) or bool({"serve INT8", "serve DIR auto"} & set(args.servers))
    run, int8, pt = build(args.arch, args.work, int8_too)
    rows = serve_rows(run, int8, pt, args.work, args.requests, args.rounds, args.servers, args.baseline)
    if set(args.servers) != set(SERVERS) or args.baseline is not None:
        print_rows(args.arch, rows)
        print_ab_ratios(rows)
        print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        if "serve DIR auto" in rows:
            print(f"auto chose: {rows['serve DIR auto']['auto'][:300]}")
        return 0
    fp32_whole, fp32_infer = in_process(run / f"{run.name}.onnx", *_images_and_rounds(args.rounds))
    int8_whole, int8_infer = in_process(int8, *_images_and_rounds(args.rounds))
    cold: dict[str, list[float]] = {"default flags": [], "--batch-sizes 1": []}
    for _ in range(args.cold_runs):
        for name, flags in (("default flags", []), ("--batch-sizes 1", ["--batch-sizes", "1"])):
            cold[name].append(cold_start(sys.executable, str(run / f"{run.name}.onnx"), flags, 300, str(REPO))[0])

    print_rows(args.arch, rows)
    print(
        f"| in-process ORT fp32 / int8, decode + preprocess + infer | {1 / fp32_whole:.2f} / {1 / int8_whole:.2f} | "
        f"| {fp32_whole * 1e3:.0f} / {int8_whole * 1e3:.0f} ms |"
    )
    print(
        f"| in-process ORT fp32 / int8, infer only (batch 10) | {1 / fp32_infer:.2f} / {1 / int8_infer:.2f} | "
        f"| {fp32_infer * 1e3:.0f} / {int8_infer * 1e3:.0f} ms |"
    )
    median = {k: statistics.median(v) for k, v in cold.items()}
    print(
        "\ncold start to /readyz 200 (median): "
        + ", ".join(f"{k} {v:.2f} s ({', '.join(f'{t:.2f}' for t in cold[k])})" for k, v in median.items())
    )
    singles = [k for k in ("serve fp32 ONNX", "serve torch bf16") if k in rows]
    auto = rows["serve DIR auto"]
    best_c1, best_c8 = max(rows[k]["c1"] for k in singles), max(rows[k]["c8"] for k in singles)
    ratio_cold = median["default flags"] / median["--batch-sizes 1"]
    ratio_int8 = rows["serve INT8"]["p50"] / int8_whole
    print(f"auto chose: {auto['auto'][:300]}")
    print(f"- cold start default / --batch-sizes 1: {ratio_cold:.2f} (target <= 1.5)")
    print(
        f"- auto / best single precision it could choose ({', '.join(singles)}): c=1 {auto['c1'] / best_c1:.2f}, "
        f"c=8 {auto['c8'] / best_c8:.2f} (target >= 0.95 both)"
    )
    if max(singles, key=lambda k: rows[k]["c1"]) != max(singles, key=lambda k: rows[k]["c8"]):
        print("  (the best at c=1 and the best at c=8 are different candidates: no single choice is best at both)")
    print(f"- INT8 served p50 c=1 / in-process decode+preprocess+infer: {ratio_int8:.2f} (target <= 1.2)")
    print(
        f"\nload average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {time.perf_counter() - started:.0f} s"
    )
    return 0


def print_rows(arch: str, rows: dict[str, dict]) -> None:
    """The served rows as a markdown table."""
    print(f"\n{arch} (random weights), {len(PHOTOS)} photos, ten-crop, loopback\n")
    print("| | c=1 img/s | c=8 img/s | p50 c=1 |\n|---|---:|---:|---:|")
    for k, r in rows.items():
        print(f"| {k} | {r['c1']:.2f} | {r['c8']:.2f} | {r['p50'] * 1e3:.0f} ms |")


def print_ab_ratios(rows: dict[str, dict]) -> None:
    """The A/B ratios of the rows present: ours / the baseline checkout's, and ``--workers 2`` / ``--workers 1``."""
    pairs = [(f"{k} / baseline", k, f"{k} {BASELINE}") for k in ("serve fp32 ONNX", "serve INT8")]
    pairs.append(("--workers 2 / --workers 1, fp32 ONNX", WORKERS_ROW, "serve fp32 ONNX"))
    for label, new, old in pairs:
        if new in rows and old in rows:
            a, b = rows[new], rows[old]
            print(f"- {label}: c=1 {a['c1'] / b['c1']:.3f}, c=8 {a['c8'] / b['c8']:.3f}")


def _images_and_rounds(rounds: int) -> tuple[list[bytes], int]:
    photos = {p.name: p for p in sample_photo_paths()}
    return [photos[n].read_bytes() for n in PHOTOS if n in photos], rounds


if __name__ == "__main__":
    raise SystemExit(main())
