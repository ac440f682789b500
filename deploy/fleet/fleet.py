"""A fleet drill on one machine: N real ``python -m serve`` replicas behind nginx (deploy/nginx.conf) on 127.0.0.1,
a closed-loop load at concurrency 16 through nginx, and three failures the fleet must absorb with zero failed
requests seen by the client:

    steady    load only: the latency baseline
    kill      one replica gets SIGKILL (then is restarted on its port)
    term      another gets SIGTERM, drains and exits 0 (then is restarted)
    rollout   every replica in turn: SIGTERM, wait for exit, start on the new model, wait for /readyz and for
              nginx to send it traffic again (a surge-less rollout's minReadySeconds)

    python deploy/fleet/fleet.py --model v1.onnx --new-model v2.onnx [--replicas 3] [--json fleet.json]

Exit 0 when every phase had zero failures, SIGTERM exits were clean and the rollout reached every replica; else 1
with the reasons. nginx is Debian's (``apt-get install nginx``), run in the foreground with a temporary prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(REPO))

from clients.load import Payload, percentile  # noqa: E402
from deploy.fleet.processes import (  # noqa: E402
    DRAIN_TIMEOUT_S,
    Nginx,
    Replica,
    free_port,
    nginx_site,
    wait_ready,
)

__all__ = [
    "DRAIN_TIMEOUT_S",
    "FleetReport",
    "Nginx",
    "Replica",
    "drill",
    "format_table",
    "free_port",
    "nginx_site",
    "wait_ready",
]
CONCURRENCY = 16


# ---- load --------------------------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    """What the client saw during one phase, and what the fleet did."""

    name: str
    seconds: float
    requests: int
    ok: int
    failures: dict[str, int]
    p50_ms: float | None
    p99_ms: float | None
    p99_vs_steady: float | None = None
    retried_by_nginx: int = 0
    models: dict[str, int] = field(default_factory=dict)  # answers by the model that gave them
    events: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def _load(
    url: str, payloads: Sequence[Payload], stop: threading.Event, concurrency: int
) -> tuple[list[float], Counter[str], Counter[str], int]:
    """Closed loop like clients.loadgen's: ``concurrency`` clients, each sends its next POST /classify as soon as
    its last answer came back, until ``stop`` is set. Returns latencies (s), failures and answering models by kind."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    models: Counter[str] = Counter()
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as http:

        async def client(i: int) -> None:
            nonlocal sent
            n = i
            while not stop.is_set():
                p = payloads[n % len(payloads)]
                n += concurrency
                sent += 1
                start = time.perf_counter()
                try:
                    r = await http.post(
                        "/classify", params={"topk": 1}, files=[("file", (p.name, p.data, p.content_type))]
                    )
                except httpx.TimeoutException:
                    failures["timeout"] += 1
                    continue
                except httpx.TransportError as e:
                    failures[type(e).__name__] += 1
                    continue
                if r.status_code != 200:
                    failures[str(r.status_code)] += 1
                    continue
                latencies.append(time.perf_counter() - start)
                models[r.json().get("model", "?")] += 1

        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return latencies, failures, models, sent


def run_phase(
    name: str,
    url: str,
    payloads: Sequence[Payload],
    action: Callable[[list[str]], None] | None,
    min_s: float,
    max_s: float = 120.0,
    nginx: Nginx | None = None,
    concurrency: int = CONCURRENCY,
) -> PhaseResult:
    """Load the fleet while ``action`` runs in a thread (it appends what it did to the list it is given); the phase
    lasts until the action is done and at least ``min_s`` has passed (``max_s`` at most)."""
    stop = threading.Event()
    events: list[str] = []
    problems: list[str] = []
    offset = nginx.log_size() if nginx else 0

    def act() -> None:
        started = time.monotonic()
        try:
            if action is not None:
                action(events)
        except Exception as e:  # a failed action is a failed phase, reported with the client's view
            problems.append(f"{name}: {type(e).__name__}: {e}")
        rest = min_s - (time.monotonic() - started)
        if rest > 0:
            time.sleep(rest)
        stop.set()

    actor = threading.Thread(target=act, daemon=True)
    watchdog = threading.Timer(max_s, stop.set)
    t0 = time.perf_counter()
    actor.start()
    watchdog.start()
    latencies, failures, models, sent = asyncio.run(_load(url, payloads, stop, concurrency))
    elapsed = time.perf_counter() - t0
    watchdog.cancel()
    actor.join(timeout=5)
    if actor.is_alive():
        problems.append(f"{name}: the action was still running after {max_s:g} s")
    lat = sorted(x * 1000 for x in latencies)
    result = PhaseResult(
        name=name,
        seconds=round(elapsed, 2),
        requests=sent,
        ok=len(lat),
        failures=dict(sorted(failures.items())),
        p50_ms=percentile(lat, 50),
        p99_ms=percentile(lat, 99),
        retried_by_nginx=nginx.retried_since(offset) if nginx else 0,
        models=dict(models),
        events=events,
        problems=problems,
    )
    if result.failures:
        result.problems.append(
            f"{name}: {sum(result.failures.values())} failed request(s) seen by the client: {result.failures}"
        )
    return result


# ---- the drill ---------------------------------------------------------------------------------------------------


@dataclass
class FleetReport:
    phases: list[PhaseResult]
    replicas: int
    concurrency: int

    @property
    def problems(self) -> list[str]:
        return [p for phase in self.phases for p in phase.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "replicas": self.replicas,
            "concurrency": self.concurrency,
            "ok": self.ok,
            "phases": [asdict(p) for p in self.phases],
        }


def model_name(url: str) -> str | None:
    try:
        return httpx.get(url + "/readyz", timeout=5).json().get("model")
    except (httpx.HTTPError, ValueError):
        return None


def _restart(replica: Replica, model: Path, events: list[str], ready_timeout: float, nginx: Nginx) -> None:
    """Start ``replica`` on ``model``; return once it is ready and nginx sends it traffic again."""
    t = time.monotonic()
    replica.start(model)
    replica.wait_ready(ready_timeout)
    ready = time.monotonic() - t
    waited = nginx.wait_in_rotation(replica.port, nginx.log_size(), ready_timeout)
    events.append(f"{replica.name} ready on {model.name} after {ready:.1f} s, in rotation {waited:.1f} s later")


def drill(
    replicas: Sequence[Replica],
    model: Path,
    new_model: Path | None,
    workdir: Path,
    payloads: Sequence[Payload],
    steady_s: float = 5.0,
    phase_min_s: float = 4.0,
    phases: Sequence[str] = ("kill", "term", "rollout"),
    ready_timeout: float = 120.0,
) -> FleetReport:
    """Start the fleet, run the steady phase and then ``phases`` under load, stop everything; the report."""
    nginx = Nginx(workdir / "nginx", [r.port for r in replicas])
    results: list[PhaseResult] = []
    try:
        for r in replicas:
            r.start(model)
        for r in replicas:
            r.wait_ready(ready_timeout)
        nginx.start()
        wait_ready(nginx.url, 30)
        steady = run_phase("steady", nginx.url, payloads, None, steady_s, nginx=nginx)
        results.append(steady)

        def kill(events: list[str]) -> None:
            victim = replicas[0]
            time.sleep(1.0)
            victim.signal(signal.SIGKILL)
            events.append(f"{victim.name} SIGKILL: exit {victim.wait_exit(10)}")
            time.sleep(1.0)
            _restart(victim, victim.model or model, events, ready_timeout, nginx)

        def term(events: list[str]) -> None:
            victim = replicas[1 % len(replicas)]
            time.sleep(1.0)
            t = time.monotonic()
            victim.signal(signal.SIGTERM)
            code = victim.wait_exit(DRAIN_TIMEOUT_S + 10)
            events.append(f"{victim.name} SIGTERM: drained and exited {code} in {time.monotonic() - t:.1f} s")
            if code != 0:
                raise RuntimeError(f"{victim.name} exited {code} after SIGTERM, not 0")
            _restart(victim, victim.model or model, events, ready_timeout, nginx)

        def rollout(events: list[str]) -> None:
            assert new_model is not None
            time.sleep(0.5)
            for victim in replicas:
                victim.signal(signal.SIGTERM)
                code = victim.wait_exit(DRAIN_TIMEOUT_S + 10)
                if code != 0:
                    raise RuntimeError(f"{victim.name} exited {code} after SIGTERM, not 0")
                _restart(victim, new_model, events, ready_timeout, nginx)
            names = {r.name: model_name(r.url) for r in replicas}
            events.append(f"serving after the rollout: {names}")
            if len(set(names.values())) != 1:
                raise RuntimeError(f"the rollout left the replicas on different models: {names}")

        actions = {"kill": kill, "term": term, "rollout": rollout}
        for name in phases:
            if name == "rollout" and new_model is None:
                continue
            results.append(run_phase(name, nginx.url, payloads, actions[name], phase_min_s, nginx=nginx))
        base = steady.p99_ms
        for p in results:
            p.p99_vs_steady = round(p.p99_ms / base, 2) if base and p.p99_ms else None
    finally:
        nginx.stop()
        for r in replicas:
            r.stop()
    return FleetReport(results, len(replicas), CONCURRENCY)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(report: FleetReport) -> str:
    """The report as a Markdown table, one row per phase."""
    rows = [
        "| phase | seconds | requests | failed | retried by nginx | p50 ms | p99 ms | p99 / steady | answers by model |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in report.phases:
        models = ", ".join(f"{k}: {v}" for k, v in sorted(p.models.items()))
        rows.append(
            f"| {p.name} | {p.seconds:.1f} | {p.requests} | {sum(p.failures.values())} | {p.retried_by_nginx} "
            f"| {_ms(p.p50_ms)} | {_ms(p.p99_ms)} | {'-' if p.p99_vs_steady is None else f'{p.p99_vs_steady:.2f}x'} | {models} |"
        )
    return "\n".join(rows)


def digits_payloads(count: int = 32) -> list[Payload]:
    """Held-out handwritten digits (scikit-learn's, as the tests use) as PNG uploads."""
    from PIL import Image

    from resnet.samples import digits_images

    images, labels = digits_images("test")
    out = []
    for i in range(min(count, len(images))):
        buf = io.BytesIO()
        Image.fromarray(images[i]).save(buf, "PNG")
        out.append(Payload(f"digit{i}_{labels[i]}.png", buf.getvalue(), "image/png"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python deploy/fleet/fleet.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="the artifact every replica starts on")
    ap.add_argument(
        "--new-model", type=Path, help="the artifact the rollout moves every replica to (no rollout without)"
    )
    ap.add_argument("--replicas", type=int, default=3, help="how many server processes (default 3)")
    ap.add_argument("--images", help="a folder of images to send (default: 32 held-out digits)")
    ap.add_argument("--steady-s", type=float, default=5.0, help="length of the steady phase (default 5)")
    ap.add_argument("--phase-min-s", type=float, default=4.0, help="shortest failure phase (default 4)")
    ap.add_argument("--json", type=Path, help="write the report here as JSON")
    args = ap.parse_args(argv)
    for path in filter(None, (args.model, args.new_model)):
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    if args.replicas < 2:
        print("error: --replicas must be >= 2 (a fleet survives one replica's death)", file=sys.stderr)
        return 2
    if args.images:
        from clients.loadgen import load_payloads
        from resnet import UserError

        try:
            payloads = load_payloads(args.images)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        payloads = digits_payloads()
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        work = Path(tmp)
        replicas = [Replica(f"replica{i}", work) for i in range(args.replicas)]
        try:
            report = drill(
                replicas,
                args.model.resolve(),
                args.new_model and args.new_model.resolve(),
                work,
                payloads,
                steady_s=args.steady_s,
                phase_min_s=args.phase_min_s,
            )
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(format_table(report))
    for p in report.phases:
        for event in p.events:
            print(f"{p.name}: {event}")
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    for problem in report.problems:
        print(f"problem: {problem}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
