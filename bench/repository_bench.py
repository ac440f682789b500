"""Model repository: the time a new version takes to serve, the p99 latency during the swap against steady state,
and the resident memory one more loaded ResNet-50 version costs.

    python -m bench.repository_bench [--model resnet50.onnx] [--seconds 10] [--concurrency 8]

A real server (``python -m serve --model-repository``, poll mode, 0.5 s) on a repository with one model, version 1
(the ONNX graph given, or a ResNet-50 with random weights exported here). Closed-loop clients send one photo per
request to ``/classify?model=r50``. After ``--seconds`` of steady state, version 2 (the same graph) is renamed into
the folder; the swap time is from that rename to the first answer by version 2. p99 "during the swap" covers the
requests sent from the rename until 1 s after the first version-2 answer. Then the config is switched to
``version_policy: { all {} }`` so version 1 loads again beside version 2: the server's resident memory (VmRSS) with
two versions minus with one is the memory of one loaded version, next to the server's own estimate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.5


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resnet50(folder: Path) -> Path:
    """A ResNet-50 with random weights as our checkpoint, exported by export.onnx (no parity gate: nothing to gate)."""
    import torch

    import resnet

    torch.manual_seed(0)
    model = resnet.create_model("resnet50", num_classes=1000).eval()
    card = resnet.make_card("resnet50", name="r50-random", labels=[f"class{i}" for i in range(1000)])
    ckpt = folder / "r50.pt"
    resnet.save_checkpoint(ckpt, model, card)
    out = folder / "r50.onnx"
    subprocess.run([sys.executable, "-m", "export.onnx", str(ckpt), "-o", str(out), "--no-gate"], cwd=REPO, check=True)
    return out


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _index(url: str) -> list[dict]:
    return httpx.post(url + "/v2/repository/index", timeout=10).json()


def _wait(cond, timeout: float = 600.0) -> None:
    """Until ``cond()`` is true; connection errors (the server not listening yet) count as false."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.1)


def _ready(url: str, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the server exited with {proc.returncode}")
    return httpx.get(url + "/readyz", timeout=2).status_code == 200


def _p99(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))] if s else float("nan")


async def _load(url: str, image: bytes, concurrency: int, stop: asyncio.Event, rows: list) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def worker() -> None:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    r = await http.post(
                        "/classify", params={"model": "r50", "topk": 1}, files={"file": ("p.jpg", image, "image/jpeg")}
                    )
                    version = r.json().get("version") if r.status_code == 200 else None
                    rows.append((t, time.monotonic() - t, r.status_code, version))
                except httpx.HTTPError as e:
                    rows.append((t, time.monotonic() - t, type(e).__name__, None))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _swap(url: str, repo: Path, model: Path, image: bytes, seconds: float, concurrency: int) -> dict:
    rows: list = []
    stop = asyncio.Event()
    task = asyncio.create_task(_load(url, image, concurrency, stop, rows))
    await asyncio.sleep(seconds)
    staging = repo / "r50" / ".2-tmp"
    staging.mkdir()
    shutil.copyfile(model, staging / "model.onnx")
    written = time.monotonic()
    staging.rename(repo / "r50" / "2")
    while not any(v == "2" for *_, v in rows):
        await asyncio.sleep(0.02)
    first_v2 = min(t + lat for t, lat, _, v in rows if v == "2")
    await asyncio.sleep(1.0 + seconds / 2)
    stop.set()
    await task
    steady = [lat for t, lat, st, _ in rows if t < written and st == 200]
    during = [lat for t, lat, st, _ in rows if written <= t <= first_v2 + 1.0 and st == 200]
    failed = [st for *_, st, _ in rows if st != 200]
    return {
        "requests": len(rows),
        "failed": len(failed),
        "failures": sorted({str(f) for f in failed}),
        "swap_s": round(first_v2 - written, 2),
        "p99_steady_ms": round(_p99(steady) * 1e3, 1),
        "p99_swap_ms": round(_p99(during) * 1e3, 1),
        "p99_ratio": round(_p99(during) / _p99(steady), 2),
        "steady_requests": len(steady),
        "swap_requests": len(during),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.repository_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="an ONNX graph of ours (default: a random ResNet-50 exported here)")
    ap.add_argument("--seconds", type=float, default=10.0, help="steady-state seconds before the swap")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args(argv)
    from resnet.samples import sample_photo_paths

    image = next(p for p in sample_photo_paths() if p.suffix.lower() in (".jpg", ".jpeg")).read_bytes()
    with tempfile.TemporaryDirectory(prefix="repo-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model = Path(args.model) if args.model else _resnet50(tmp)
        repo = tmp / "models"
        (repo / "r50" / "1").mkdir(parents=True)
        shutil.copyfile(model, repo / "r50" / "1" / "model.onnx")
        port = _port()
        url = f"http://127.0.0.1:{port}"
        log = tmp / "server.log"
        cmd = [sys.executable, "-m", "serve", "--model-repository", str(repo), "--port", str(port)]
        cmd += ["--model-control-mode", "poll", "--repository-poll-secs", str(POLL_S)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: _ready(url, proc))
            rss_before_any_traffic = _rss(proc.pid)
            result = asyncio.run(_swap(url, repo, model, image, args.seconds, args.concurrency))
            loaded = re.findall(r"model r50 version 2 loaded and warmed up in ([0-9.]+) s", log.read_text())
            result["v2_load_and_warm_s"] = float(loaded[0]) if loaded else None
            _wait(lambda: {r["version"]: r["state"] for r in _index(url)}.get("1") == "UNAVAILABLE")
            time.sleep(1.0)
            one = _rss(proc.pid)
            (repo / "r50" / "config.pbtxt").write_text("version_policy: { all {} }\n")
            _wait(lambda: sum(r["state"] == "READY" for r in _index(url)) == 2)
            time.sleep(1.0)
            two = _rss(proc.pid)
            metrics = httpx.get(url + "/metrics", timeout=10).text
            est = re.search(r'resnet_serve_model_memory_estimate_bytes\{model="r50",version="1"\} (\S+)', metrics)
            result.update(
                rss_one_version_mib=round(one / 2**20),
                rss_two_versions_mib=round(two / 2**20),
                rss_per_version_mib=round((two - one) / 2**20),
                rss_at_start_mib=round(rss_before_any_traffic / 2**20),
                estimate_per_version_mib=round(float(est.group(1)) / 2**20) if est else None,
                model_mib=round(model.stat().st_size / 2**20, 1),
            )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(json.dumps(result, indent=2))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
