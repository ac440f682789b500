"""The load engine behind `clients.loadgen`: closed-loop (N clients, each sends when its last answer came back) or
open-loop Poisson arrivals at a rate, on asyncio + httpx.AsyncClient, bounded in time and in request count."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from .promstats import server_averages

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Payload:
    """One image to send: its name, bytes and media type."""

    name: str
    data: bytes
    content_type: str


@dataclass(frozen=True)
class LoadSettings:
    """What every level shares."""

    topk: int = 5
    crops: str = "ten"
    images_per_request: int = 1
    timeout: float = 30.0
    max_inflight: int = 256  # open loop: arrivals beyond this many outstanding requests are dropped and counted
    model_name: str | None = None  # a model repository's model (/classify?model=NAME); None = the server's default

    def params(self) -> dict[str, Any]:
        """The /classify query parameters every request carries."""
        out: dict[str, Any] = {"topk": self.topk, "crops": self.crops}
        if self.model_name:
            out["model"] = self.model_name
        return out


@dataclass
class LevelResult:
    """The figures of one level, as perf_analyzer reports them."""

    mode: str  # "concurrency" or "rate"
    level: float
    elapsed_s: float
    requests: int
    ok: int
    images_ok: int
    throughput: float  # images per second, successful only
    latency_ms: dict[str, float | None]  # p50/p90/p95/p99/mean/max of successful requests
    errors: dict[str, int] = field(default_factory=dict)  # "503": 3, "timeout": 1, ...
    server_batch_size: float | None = None
    server_queue_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation, as numpy's default) of an ascending list; None when empty."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class _Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.requests = 0
        self.first_send: float | None = None
        self.last_done: float | None = None


async def _send(
    http: httpx.AsyncClient, payloads: list[Payload], settings: LoadSettings, rec: _Recorder, start: float
) -> None:
    """One POST /classify; records latency (from ``start``, the send or scheduled arrival time) or the error kind."""
    files = [("file", (p.name, p.data, p.content_type)) for p in payloads]
    rec.requests += 1
    rec.first_send = start if rec.first_send is None else rec.first_send
    try:
        response = await http.post("/classify", params=settings.params(), files=files)
        kind = None if response.status_code == 200 else str(response.status_code)
    except httpx.TimeoutException:
        kind = "timeout"
    except httpx.ConnectError:
        kind = "connect"
    except httpx.TransportError:
        kind = "transport"
    done = time.perf_counter()
    rec.last_done = done
    if kind is None:
        rec.latencies.append(done - start)
    else:
        rec.errors[kind] += 1


async def _closed_loop(
    http: httpx.AsyncClient,
    batches: itertools.cycle,
    settings: LoadSettings,
    rec: _Recorder,
    concurrency: int,
    duration: float,
    max_requests: int | None,
) -> None:
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < deadline and (max_requests is None or rec.requests < max_requests):
            await _send(http, next(batches), settings, rec, time.perf_counter())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _open_loop(
    http: httpx.AsyncClient,
    batches: itertools.cycle,
    settings: LoadSettings,
    rec: _Recorder,
    rate: float,
    duration: float,
    max_requests: int | None,
    seed: int,
) -> None:
    rng = random.Random(seed)
    start = time.perf_counter()
    arrival = start
    pending: set[asyncio.Task[None]] = set()
    issued = 0
    while max_requests is None or issued < max_requests:
        arrival += rng.expovariate(rate)
        if arrival - start > duration:
            break
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        issued += 1
        if len(pending) >= settings.max_inflight:
            rec.requests += 1
            rec.errors["dropped"] += 1
            continue
        # Latency counts from the scheduled arrival, so a late send is not hidden (no coordinated omission).
        task = asyncio.create_task(_send(http, next(batches), settings, rec, arrival))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)


async def _scrape(http: httpx.AsyncClient) -> str | None:
    try:
        response = await http.get("/metrics")
        return response.text if response.status_code == 200 else None
    except httpx.HTTPError:
        return None


async def run_level(
    url: str,
    payloads: list[Payload],
    settings: LoadSettings,
    mode: str,
    level: float,
    duration: float,
    max_requests: int | None = None,
    headers: dict[str, str] | None = None,
    seed: int = 0,
) -> LevelResult:
    """Run one level (``mode`` "concurrency" with ``level`` clients, or "rate" with ``level`` requests/s)."""
    per = settings.images_per_request
    batches = itertools.cycle(
        [[payloads[(i + j) % len(payloads)] for j in range(per)] for i in range(0, len(payloads), per)]
    )
    connections = int(level) if mode == "concurrency" else settings.max_inflight
    limits = httpx.Limits(max_connections=connections + 1, max_keepalive_connections=connections + 1)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=settings.timeout, limits=limits) as http:
        before = await _scrape(http)
        rec = _Recorder()
        t0 = time.perf_counter()
        if mode == "concurrency":
            await _closed_loop(http, batches, settings, rec, int(level), duration, max_requests)
        else:
            await _open_loop(http, batches, settings, rec, level, duration, max_requests, seed)
        elapsed = max(time.perf_counter() - t0, 1e-9)
        after = await _scrape(http)
    lat = sorted(x * 1000.0 for x in rec.latencies)
    latency: dict[str, float | None] = {f"p{q}": percentile(lat, q) for q in PERCENTILES}
    latency["mean"] = sum(lat) / len(lat) if lat else None
    latency["max"] = lat[-1] if lat else None
    batch, queue_ms = server_averages(before, after)
    ok = len(rec.latencies)
    return LevelResult(
        mode=mode,
        level=level,
        elapsed_s=elapsed,
        requests=rec.requests,
        ok=ok,
        images_ok=ok * per,
        throughput=ok * per / elapsed,
        latency_ms=latency,
        errors=dict(sorted(rec.errors.items())),
        server_batch_size=batch,
        server_queue_ms=queue_ms,
    )


async def warm_up(
    url: str, payloads: list[Payload], settings: LoadSettings, seconds: float, headers: dict[str, str] | None
) -> None:
    """Send requests one at a time for ``seconds`` so the first level does not pay for cold caches."""
    if seconds > 0:
        await run_level(url, payloads, settings, "concurrency", 1, seconds, headers=headers)
