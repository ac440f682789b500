"""The real server the clients' tests talk to: `python -m serve` on 127.0.0.1, started once per test session.

Every tests/test_clients_*.py module asks for it through `shared_server(checkpoint)`; the process is stopped when
the session's interpreter exits. It runs with an API key and small size limits so that 401 and 413 are reachable.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
API_KEY = "test-key-0123"
MAX_PIXELS = 3_000_000  # the sample photos are all below it (retina.jpg is 1411x1411)
MAX_BODY_BYTES = 4_000_000


@dataclass
class Server:
    url: str
    api_key: str
    process: subprocess.Popen
    log: Path


_server: Server | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, log: Path, extra: list[str] | None = None, timeout: float = 120.0) -> Server:
    """Start `python -m serve` and wait until /readyz answers 200; raise with the server's log if it does not."""
    port = free_port()
    cmd = [sys.executable, "-m", "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
           "--api-key", API_KEY, "--max-pixels", str(MAX_PIXELS), "--max-body-bytes", str(MAX_BODY_BYTES),
           "--threads", "2", "--log-level", "warning", *(extra or [])]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESNET_SERVE_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2.0).status_code == 200:
                return Server(url, API_KEY, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"server not ready within {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def shared_server(model: Path, log_dir: Path) -> Server:
    """The session's one server for the clients' tests (started on first use, stopped at exit)."""
    global _server
    if _server is None or _server.process.poll() is not None:
        _server = start_server(model, log_dir / "serve.log")
        atexit.register(stop, _server.process)
    return _server
