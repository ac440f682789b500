"""``python -m serve --model PATH [--backend auto|tensorrt|onnxruntime|torch] [--host] [--port] ...``

Loads the model first (a bad artifact is one clear line and a non-zero exit, before any port is opened), then runs
uvicorn. SIGTERM/SIGINT drain: /readyz and new /classify answer 503, in-flight requests finish, then the process
exits 0. A second SIGINT forces the exit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

import uvicorn
from fastapi import FastAPI

from resnet import run_cli

from .app import create_app
from .precision import select_backend
from .settings import Settings, settings_from

log = logging.getLogger("serve")


class JsonFormatter(logging.Formatter):
    """Structured logs: one JSON object per line (access lines are already JSON and pass through as ``access``)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        entry: dict = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name}
        if record.name == "serve.access":
            entry["access"] = json.loads(msg)
        else:
            entry["message"] = msg
            entry.update(getattr(record, "fields", None) or {})  # structured extras, e.g. the precision table
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("serve", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False


class DrainingServer(uvicorn.Server):
    """uvicorn whose first SIGTERM/SIGINT drains: readiness 503, in-flight requests finish, then a normal exit."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, settings: Settings) -> None:
        super().__init__(config)
        self.app_ref, self.settings = app, settings
        self._drain_task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or self.should_exit:
            if sig == signal.SIGINT:  # second Ctrl+C: stop now
                self.force_exit = True
            self.should_exit = True
            return
        service = getattr(self.app_ref.state, "service", None)
        if service is not None:
            service.draining = True
        log.info("signal %s: draining (readiness 503, finishing in-flight requests)", signal.Signals(sig).name)
        self._drain_task = asyncio.get_event_loop().create_task(self._drain())

    async def _drain(self) -> None:
        started = time.monotonic()
        while time.monotonic() - started < self.settings.drain_timeout_s:
            idle = self.app_ref.state.in_flight == 0
            if idle and time.monotonic() - started >= self.settings.drain_grace_s:
                break
            await asyncio.sleep(0.05)
        else:
            log.warning(
                "drain timeout (%.0f s): exiting with %d request(s) in flight",
                self.settings.drain_timeout_s,
                self.app_ref.state.in_flight,
            )
        log.info("drained in %.2f s; exiting", time.monotonic() - started)
        self.should_exit = True


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from(argv)
    setup_logging(settings.log_level)
    backend = select_backend(settings)  # --model FILE, or DIR + --precision (serve/precision.py)
    app = create_app(settings, backend)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.drain_timeout_s,
    )
    server = DrainingServer(config, app, settings)
    log.info("serving %s (%s) on http://%s:%d", backend.card.name, backend.name, settings.host, settings.port)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(run_cli(main, prog="python -m serve"))
