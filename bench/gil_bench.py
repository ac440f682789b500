"""The serial time per request: how long one server process holds the GIL per request, and the ceiling it predicts.

    python -m bench.gil_bench --work /tmp/defaults_bench [--arch resnet50] [--seconds 20] [--baseline DIR] [--top N]

Serves the fp32 ONNX export (``bench.defaults_bench``'s artifacts, built when missing) at concurrency 8 while
``py-spy record --gil`` samples the server 100 times a second: each sample is a moment some thread held the GIL.
GIL-busy fraction = samples / (rate x seconds); serial time per request = GIL-busy seconds / requests answered; the
single-process ceiling = requests/s / GIL-busy fraction (the rate at which the GIL, not the cores, would be the
wall). ``--baseline DIR`` measures another checkout's server the same way, one after the other. ``--top N`` prints
where the GIL was held: the N functions with the most GIL time per request, each counting the samples whose stack
holds it (so callers include their callees). A small network (``--arch cifar_resnet8``) shows the Python around a
request best: more requests per second, the same Python per request.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench.defaults_bench import REPO, _images_and_rounds, build, load, start, stop
from bench.serve_cold_start import free_port

RATE = 100  # py-spy samples per second
CONCURRENCY = 8


def gil_samples(raw: Path) -> int:
    """Samples in a py-spy ``--format raw`` file (collapsed stacks, each line ending in its count)."""
    text = raw.read_text() if raw.exists() else ""
    return sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.strip())


def _function(frame: str) -> str:
    """A py-spy raw frame, ``name (path/file.py:line)`` -> ``name (file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]})"


def where_held(raw: Path, requests: int, top: int) -> list[tuple[float, str]]:
    """The ``top`` functions by GIL-held ms per request in a py-spy raw file, inclusive: (ms, "function (file)")."""
    held: collections.Counter[str] = collections.Counter()
    text = raw.read_text() if raw.exists() else ""
    for line in filter(str.strip, text.splitlines()):
        stack, count = line.rsplit(" ", 1)
        for function in {_function(f) for f in stack.split(";")}:
            held[function] += int(count)
    return [(n / RATE / max(1, requests) * 1e3, name) for name, n in held.most_common(top)]


def photos(jpeg: bool) -> list[bytes]:
    """The defaults benchmark's photos (five of seven are PNG), or the same re-encoded as JPEG, the GPU benchmark's
    workload (``bench.gpu_bench.jpeg_photos``)."""
    if jpeg:
        from bench.gpu_bench import jpeg_photos

        return jpeg_photos()
    return _images_and_rounds(1)[0]


def measure(model: Path, work: Path, seconds: float, cwd: Path, tag: str, jpeg: bool = False) -> dict[str, float]:
    """One server from ``cwd`` on ``model`` under load for ``seconds`` with py-spy attached."""
    port = free_port()
    cmd = [sys.executable, "-m", "serve", "--model", str(model)]
    proc = start(cmd, port, work / f"gil_{tag}.log", cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    images = photos(jpeg)
    raw = work / f"gil_{tag}.txt"
    try:
        asyncio.run(load(url, images, 2 * CONCURRENCY, CONCURRENCY))  # warm
        spy = subprocess.Popen(
            [
                _py_spy(),
                "record",
                "--gil",
                "--pid",
                str(proc.pid),
                "--rate",
                str(RATE),
                "--duration",
                str(round(seconds)),
            ]
            + ["--format", "raw", "--output", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        done = [0]
        stop_at = time.monotonic() + seconds

        def drive() -> None:  # requests of CONCURRENCY clients, round after round, while py-spy samples
            while time.monotonic() < stop_at:
                asyncio.run(load(url, images, CONCURRENCY, CONCURRENCY))
                done[0] += CONCURRENCY

        t0 = time.monotonic()
        driver = threading.Thread(target=drive)
        driver.start()
        driver.join()
        wall = time.monotonic() - t0
        spy.wait(timeout=seconds + 60)
    finally:
        stop(proc)
    busy = gil_samples(raw) / (RATE * seconds)
    rps = done[0] / wall
    return {
        "requests": done[0],
        "requests_per_s": rps,
        "gil_busy": busy,
        "serial_ms_per_request": busy * seconds / max(1, done[0]) * 1e3,
        "ceiling_rps": rps / busy if busy else float("inf"),
    }


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed (pip install py-spy; the [dev] extra has it)")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gil_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/defaults_bench"), help="artifacts and server logs")
    p.add_argument("--arch", default="resnet50", help="network (random weights), e.g. resnet50, cifar_resnet8")
    p.add_argument(
        "--seconds", type=int, default=20, help="sampling time per server (whole seconds: py-spy takes no fraction)"
    )
    p.add_argument("--baseline", type=Path, help="another checkout to measure the same way (an A/B)")
    p.add_argument("--top", type=int, default=0, help="print the N functions holding the GIL longest per request")
    p.add_argument("--jpeg", action="store_true", help="the photos as JPEG (the GPU benchmark's workload)")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    run, _, _ = build(args.arch, args.work, int8_too=False)
    model = run / f"{run.name}.onnx"
    rows = {"this checkout": measure(model, args.work, args.seconds, REPO, "this", args.jpeg)}
    if args.baseline is not None:
        rows["baseline"] = measure(model, args.work, args.seconds, args.baseline, "baseline", args.jpeg)
    kind = "the photos as JPEG" if args.jpeg else "the photos (PNG and JPEG)"
    print(f"\n{args.arch} fp32 ONNX, {kind}, c={CONCURRENCY}, py-spy --gil at {RATE} Hz for {args.seconds:g} s\n")
    print("| server | requests/s | GIL busy | serial ms / request | predicted 1-process ceiling |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['requests_per_s']:.2f} | {r['gil_busy']:.0%} | {r['serial_ms_per_request']:.1f} | "
            f"{r['ceiling_rps']:.1f} req/s |"
        )
    for name, r in rows.items() if args.top else ():
        tag = "this" if name == "this checkout" else "baseline"
        print(f"\n{name}: GIL-held ms per request, by function (inclusive)\n")
        for ms, frame in where_held(args.work / f"gil_{tag}.txt", int(r["requests"]), args.top):
            print(f"{ms:7.2f}  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
