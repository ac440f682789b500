"""`python -m clients.loadgen`: load a running server's POST /classify and report like Triton's perf_analyzer.

Closed loop by default (at each --concurrency level, that many clients each send their next request as soon as the
last answer came back); with --rate, open-loop Poisson arrivals at each rate. Every level is bounded by --duration
and, optionally, --max-requests. Reports per level: throughput (images/s), p50/p90/p95/p99 latency, errors by
status, and the server's own average batch size and queue time read from /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import httpx

from resnet import UsageError, UserError, run_cli

from .client import CROPS, DEFAULT_URL, check_url, content_type_for, find_images
from .load import LevelResult, LoadSettings, Payload, run_level, warm_up
from .loadreport import format_table, write_csv, write_json, write_plot

MAX_IMAGES = 256
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds from ``20s``, ``500ms``, ``1m`` or a bare number of seconds."""
    m = _DURATION.match(text)
    if not m:
        raise UsageError(f"a duration looks like 20s, 500ms or 1m, not {text!r}")
    value = float(m.group(1)) * {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0}[m.group(2)]
    return value


def parse_levels(text: str, kind: type, what: str) -> list:
    """``"1,2,4"`` -> [1, 2, 4]; every level must be positive."""
    try:
        levels = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what} must be a comma-separated list of numbers, not {text!r}") from None
    if not levels or any(x <= 0 for x in levels):
        raise UsageError(f"{what} must be positive numbers, not {text!r}")
    return levels


def is_loopback(url: str) -> bool:
    """True when the URL's host is localhost or a loopback address."""
    host = httpx.URL(url).host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_payloads(folder: str) -> list[Payload]:
    """Up to MAX_IMAGES images (a folder, recursively, or one file) read into memory once."""
    paths = find_images([folder])[:MAX_IMAGES]
    if not paths:
        raise UsageError(f"no images found in {folder}")
    payloads = []
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read {p}: {e.strerror or e}") from None
        payloads.append(Payload(p.name, data, content_type_for(p.name, data)))
    return payloads


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m clients.loadgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--url",
        default=DEFAULT_URL,
        help="server base URL; only loopback unless you name another host here (default: %(default)s)",
    )
    ap.add_argument(
        "--images", required=True, help="folder of images (searched recursively) or one image; sent round-robin"
    )
    ap.add_argument(
        "--concurrency",
        default="1,2,4,8",
        help="closed-loop levels: comma-separated client counts (default: %(default)s)",
    )
    ap.add_argument(
        "--rate", default=None, help="open loop instead: comma-separated Poisson arrival rates in requests/s"
    )
    ap.add_argument(
        "--duration", default="20s", help="how long each level runs, e.g. 20s, 500ms, 1m (default: %(default)s)"
    )
    ap.add_argument("--max-requests", type=int, default=None, help="also stop a level after this many requests")
    ap.add_argument(
        "--warmup",
        default="2s",
        help="single-client warm-up before the first level, not reported (default: %(default)s)",
    )
    ap.add_argument(
        "--images-per-request",
        type=int,
        default=1,
        help="images per request, as multipart file fields (default: %(default)s)",
    )
    ap.add_argument("--topk", type=int, default=5, help="top-k asked of the server (default: %(default)s)")
    ap.add_argument(
        "--crops", choices=CROPS, default="ten", help="ten-crop, centre crop or multiscale (default: %(default)s)"
    )
    ap.add_argument(
        "--model-name",
        default=None,
        help="the model to load, by name, on a server with a model repository (default: the server's default model)",
    )
    ap.add_argument("--api-key", default=None, help="API key, when the server was started with one")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds (default: %(default)s)")
    ap.add_argument(
        "--max-inflight",
        type=int,
        default=256,
        help="open loop: most outstanding requests; later arrivals are dropped and counted (default: %(default)s)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals (default: %(default)s)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")
    ap.add_argument("--csv", default=None, metavar="PATH", help="write one CSV row per level here")
    ap.add_argument(
        "--plot", default=None, metavar="PATH", help="draw throughput and p99 latency against the level to this PNG"
    )
    return ap


async def _run(
    args: argparse.Namespace, url: str, payloads: list[Payload], mode: str, levels: list
) -> list[LevelResult]:
    settings = LoadSettings(
        topk=args.topk,
        crops=args.crops,
        images_per_request=args.images_per_request,
        timeout=args.timeout,
        max_inflight=args.max_inflight,
        model_name=args.model_name,
    )
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    await warm_up(url, payloads, settings, parse_duration(args.warmup), headers)
    results = []
    for level in levels:
        r = await run_level(
            url,
            payloads,
            settings,
            mode,
            level,
            parse_duration(args.duration),
            args.max_requests,
            headers=headers,
            seed=args.seed,
        )
        print(f"  {mode} {level:g}: {r.ok}/{r.requests} ok, {r.throughput:.1f} images/s", file=sys.stderr, flush=True)
        results.append(r)
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = check_url(args.url)
    for name in ("max_requests", "images_per_request", "topk", "max_inflight"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, not {args.timeout}")
    if parse_duration(args.duration) <= 0:
        raise UsageError("--duration must be positive")
    parse_duration(args.warmup)
    mode, levels = (
        ("rate", parse_levels(args.rate, float, "--rate"))
        if args.rate
        else ("concurrency", parse_levels(args.concurrency, int, "--concurrency"))
    )
    payloads = load_payloads(args.images)
    if not is_loopback(url):
        print(f"loadgen: {url} is not a loopback address; loading it because you named it with --url", file=sys.stderr)
    # Fail fast, with one line, when nothing is listening (rather than a level full of connection errors).
    try:
        httpx.get(url + "/healthz", timeout=min(args.timeout, 10.0)).raise_for_status()
    except httpx.HTTPStatusError as e:
        raise UserError(f"{url}/healthz answered HTTP {e.response.status_code}: is it our server?") from None
    except httpx.HTTPError:
        raise UserError(f"cannot connect to {url} (connection refused: is the server running?)") from None
    print(
        f"loadgen: {len(payloads)} image(s), {mode} levels {','.join(f'{x:g}' for x in levels)}, "
        f"{args.duration} each, {args.crops}-crop -> {url}/classify",
        file=sys.stderr,
    )
    results = asyncio.run(_run(args, url, payloads, mode, levels))
    print(format_table(results))
    meta = {
        "url": url,
        "mode": mode,
        "levels": levels,
        "duration_s": parse_duration(args.duration),
        "max_requests": args.max_requests,
        "images": len(payloads),
        "images_per_request": args.images_per_request,
        "crops": args.crops,
        "topk": args.topk,
        "model_name": args.model_name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for path, write in (
        (args.json, lambda p: write_json(p, results, meta)),
        (args.csv, lambda p: write_csv(p, results)),
        (args.plot, lambda p: write_plot(p, results, f"POST /classify ({args.crops}-crop) at {url}")),
    ):
        if path:
            print(f"wrote {write(Path(path))}", file=sys.stderr)
    return 1 if any(r.ok == 0 for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, prog="clients.loadgen"))
