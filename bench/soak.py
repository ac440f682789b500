"""Soak: a real ``python -m serve`` on 127.0.0.1 under a hostile mix, bounded in count and time.

``python -m bench.soak --model MODEL.onnx [--requests 2000] [--concurrency 64]``

The mix (seeded): good images, mutated images (bit flips, overwrites, truncations, inserted runs of real PNG,
JPEG, GIF, BMP, WebP and TIFF files), clients that disconnect mid-body, and oversized header lines. Passes when every
answer is 200, a 4xx or a 503 with Retry-After, the server is alive at the end, and its RSS grew by at most 15 %
from after a warm-up round to the end. Then the amplification case: two requests of 64 small-file 6000x6000 PNGs
next to a small one, reporting the refusal, the small request's latency and the peak RSS. Prints a Markdown table
for bench/RESULTS.md. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from tests.serve_support import Server

KINDS = ("good", "mutant", "disconnect", "big_header")
WEIGHTS = (0.3, 0.55, 0.08, 0.07)


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def seeds() -> list[bytes]:
    img = Image.radial_gradient("L").convert("RGB").resize((96, 80))
    out = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out.append(buf.getvalue())
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b)) if b else 0
        kind = rng.choice(("flip", "byte", "truncate", "insert"))
        if kind == "flip" and b:
            b[i] ^= 1 << rng.randrange(8)
        elif kind == "byte" and b:
            b[i] = rng.randrange(256)
        elif kind == "truncate":
            del b[max(1, i) :]
        else:
            b[i:i] = bytes([rng.randrange(256)]) * rng.randint(1, 64)
    return bytes(b)


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            return s.recv(65536)
        except OSError:
            return b""


def disconnect(port: int, body: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = (
            f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(body) * 4}\r\n\r\n"
        )
        s.sendall(head.encode() + body)
        time.sleep(0.05)


async def one(kind: str, client: httpx.AsyncClient, port: int, payload: bytes) -> str:
    if kind == "disconnect":
        await asyncio.to_thread(disconnect, port, payload)
        return "closed"
    if kind == "big_header":
        line = b"X-Big: " + b"a" * (1 << 20)
        answer = await asyncio.to_thread(
            raw_request, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n"
        )
        return answer[9:12].decode() or "closed"
    r = await client.post("/classify", files=[("file", ("x", payload))])
    if r.status_code == 503 and r.headers.get("Retry-After") is None:
        return "503-without-retry-after"
    return str(r.status_code)


async def soak(server: Server, n: int, concurrency: int, seed: int) -> dict[str, collections.Counter]:
    rng = random.Random(seed)
    good = seeds()
    plan = []
    for _ in range(n):
        kind = rng.choices(KINDS, WEIGHTS)[0]
        data = rng.choice(good)
        plan.append((kind, mutate(rng, data) if kind == "mutant" else data))
    counts: dict[str, collections.Counter] = {k: collections.Counter() for k in KINDS}
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:

        async def run(kind: str, payload: bytes) -> None:
            async with sem:
                try:
                    counts[kind][await one(kind, client, server.port, payload)] += 1
                except httpx.HTTPError as e:
                    counts[kind][type(e).__name__] += 1

        await asyncio.gather(*(run(k, p) for k, p in plan))
    return counts


def amplification(server: Server) -> dict[str, object]:
    buf = io.BytesIO()
    Image.new("L", (6000, 6000), 128).save(buf, "PNG", optimize=True)
    big = buf.getvalue()
    small = seeds()[0]
    out: dict[str, object] = {"big_file_kb": round(len(big) / 1024)}

    async def go() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            files = [("file", (f"{i}.png", big)) for i in range(64)]
            heavy = [asyncio.ensure_future(c.post("/classify", files=files)) for _ in range(2)]
            await asyncio.sleep(0.2)
            t = time.perf_counter()
            r = await c.post("/classify", files=[("file", ("s.png", small))])
            out["small_status"], out["small_s"] = r.status_code, round(time.perf_counter() - t, 3)
            out["big_status"] = [(await h).status_code for h in heavy]

    asyncio.run(go())
    out["rss_mb"], out["peak_rss_mb"] = (round(x) for x in rss_mb(server.proc.pid))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    log = Path(tempfile.mkdtemp(prefix="soak-")) / "serve.log"
    server = Server(["--model", args.model, "--request-timeout-s", "60"], log_path=log).start(timeout=180)
    try:
        asyncio.run(soak(server, 64, 16, args.seed + 1))  # warm-up: allocator and caches settle
        before, _ = rss_mb(server.proc.pid)
        started = time.perf_counter()
        counts = asyncio.run(soak(server, args.requests, args.concurrency, args.seed))
        took = time.perf_counter() - started
        after, peak = rss_mb(server.proc.pid)
        alive = httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        amp = amplification(server)
    finally:
        code = server.stop()
    allowed = lambda a: a == "200" or a.startswith("4") or a in ("503", "closed")  # noqa: E731
    bad = {k: {a: c for a, c in v.items() if not allowed(a)} for k, v in counts.items()}
    growth = (after - before) / before * 100
    print("| kind | requests | answers |\n|---|---|---|")
    for kind in KINDS:
        print(f"| {kind} | {sum(counts[kind].values())} | {dict(sorted(counts[kind].items()))} |")
    print(
        f"\n{args.requests} requests at concurrency {args.concurrency} in {took:.1f} s; RSS {before:.0f} -> "
        f"{after:.0f} MB ({growth:+.1f} %), peak {peak:.0f} MB; alive {alive}; exit code {code}"
    )
    print(
        f"amplification (2 x 64 PNGs of 6000x6000, {amp['big_file_kb']} KB each, + 1 small): big {amp['big_status']}, "
        f"small {amp['small_status']} in {amp['small_s']} s; RSS {amp['rss_mb']} MB, peak {amp['peak_rss_mb']} MB"
    )
    ok = alive and code == 0 and not any(bad.values()) and growth <= 15
    if not ok:
        print(f"FAILED: unexpected answers {bad}" if any(bad.values()) else "FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
