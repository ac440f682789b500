"""``python -m serve --workers N``: one server over N processes (docs/DESIGN.md, "Process model").

The supervisor binds the TCP socket once and starts N workers, each today's whole server (``python -m serve ...
--workers 1``) accepting on that inherited socket, plus a private unix socket of its own (``serve.siblings``).
Prometheus counters and histograms live in files every worker writes (prometheus-client's multiprocess mode), so any
worker's /metrics is the whole server's. A worker that dies is replaced; one that dies before it ever listened (a bad
model, a missing provider) stops the server with its exit code. SIGTERM/SIGINT are passed to every worker (each drains
as one server does, ``serve.server``); past the drain timeout, stragglers are killed; the supervisor exits last.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from .settings import Settings
from .siblings import ENV_DIR, ENV_FD, ENV_SOCKET, ENV_TOKEN

log = logging.getLogger("serve.workers")
MAX_AUTO_WORKERS = 8
KILL_MARGIN_S = 10.0  # past the drain timeout, before a worker that has not exited is killed
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # between replacements of a worker that keeps dying before it listens


def worker_count(requested: int, cpus: int | None = None) -> int:
    """``--workers``: N as given; 0 = one per 4 CPU cores, at least 1 and at most 8 (one process keeps 2-4 cores
    busy on the CPU path; 4 processes fed one GPU 4x faster than one on a 16-core machine)."""
    if requested > 0:
        return requested
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(MAX_AUTO_WORKERS, cpus // 4))


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen
    socket_path: Path
    started_at: float
    listened: bool = False  # its private socket appeared: it got past loading the model
    failures: int = 0  # deaths in a row before it listened
    reaped: bool = False  # its exit was seen and its live gauges dropped


class Supervisor:
    """Binds the port, starts and replaces the workers, passes signals on; ``run()`` returns the exit code."""

    def __init__(self, settings: Settings, argv: Sequence[str], n: int) -> None:
        self.settings, self.n = settings, n
        self.dir = Path(tempfile.mkdtemp(prefix="resnet-serve-"))
        self.metrics_dir = self.dir / "metrics"
        self.metrics_dir.mkdir()
        self.sock = socket.create_server((settings.host, settings.port), backlog=2048)
        self.sock.set_inheritable(True)
        # Marks a sibling's forwarded load/unload (serve.siblings): a client cannot guess it, so it cannot keep one.
        self.token = secrets.token_hex(16)
        # Each worker keeps the whole machine's thread counts (--threads 0 = every core): split into shares, a lone
        # request ran on one core of two and --workers 2 served 0.57x of one process at c=8 on 2 quiet cores
        # (bench/RESULTS.md); the pools do not spin (resnet.runtime.ort), so busy workers only share the cores.
        self.argv = [*argv, "--workers", "1"]
        self.workers: list[Worker] = []
        self.stop_signal: int | None = None
        self.stopped_at = 0.0

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def spawn(self, index: int, failures: int = 0) -> Worker:
        path = self.dir / f"worker-{index}.sock"
        path.unlink(missing_ok=True)
        env = {
            **os.environ,
            ENV_FD: str(self.sock.fileno()),
            ENV_SOCKET: str(path),
            ENV_DIR: str(self.dir),
            ENV_TOKEN: self.token,
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "serve", *self.argv],
            env=env,
            pass_fds=[self.sock.fileno()],
            start_new_session=True,  # Ctrl+C reaches the supervisor only, which passes it on once
        )
        log.info("worker %d started (pid %d)", index, proc.pid)
        return Worker(index, proc, path, time.monotonic(), failures=failures)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        first = self.stop_signal is None
        self.stop_signal = sig
        if first:
            self.stopped_at = time.monotonic()
            log.info("signal %s: draining %d workers", signal.Signals(sig).name, len(self.workers))
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(sig)  # a second SIGINT forces each worker's exit, as with one server

    def run(self) -> int:
        """Serve until a signal and every worker has exited; the code of a worker that failed to start, else 0."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            log.info("serving on http://%s:%d with %d workers", self.settings.host, self.port, self.n)
            self.workers = [self.spawn(i) for i in range(self.n)]
            if self.stop_signal is not None:  # a signal came while they were being started
                self._on_signal(self.stop_signal, None)
            return self._watch()
        finally:
            self._kill_all()
            self.sock.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _watch(self) -> int:
        code = 0
        while True:
            alive = 0
            for i, w in enumerate(self.workers):
                w.listened = w.listened or w.socket_path.exists()
                rc = w.proc.poll()
                if rc is None:
                    alive += 1
                    continue
                if not w.reaped:
                    mark_process_dead(w.proc.pid, str(self.metrics_dir))  # its live gauges go; its counts stay
                    w.reaped = True
                if self.stop_signal is not None:
                    continue
                if not w.listened and not any(x.listened for x in self.workers):
                    log.error("worker %d exited with %d before it served: stopping", w.index, rc)
                    self._on_signal(signal.SIGTERM, None)
                    code = rc or 1
                    continue
                failures = 0 if w.listened else w.failures + 1
                wait = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1] if failures else 0.0
                if time.monotonic() - w.started_at < wait:
                    continue
                log.warning("worker %d (pid %d) exited with %d: replacing it", w.index, w.proc.pid, rc)
                self.workers[i] = self.spawn(w.index, failures)
                alive += 1
            if self.stop_signal is not None:
                if alive == 0:
                    return code
                if time.monotonic() - self.stopped_at > self.settings.drain_timeout_s + KILL_MARGIN_S:
                    log.error("workers still running past the drain timeout: killing them")
                    self._kill_all()
            time.sleep(0.05)

    def _kill_all(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()


def supervise(settings: Settings, argv: Sequence[str], n: int) -> int:
    """Run ``n`` workers of the server ``argv`` describes; see the module docstring."""
    return Supervisor(settings, argv, n).run()
