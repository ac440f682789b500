"""uvicorn, with the limits of ``serve.api.protocol`` and a drain whose deadline bounds the whole exit.

The first SIGTERM/SIGINT drains: /readyz and new requests answer 503, requests in flight go on. When none is left
(and ``--drain-grace-s`` has passed) the server exits. At ``--drain-timeout-s`` after the signal at the latest,
requests still running are cancelled and answered a JSON 503 + Retry-After (``serve.middleware.ShutdownGuard``),
connections close and the process exits: the whole exit stays within the drain timeout (plus the last batch
running on the backend). A second SIGINT forces the exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from .api.protocol import Limits, uvicorn_options
from .api.state import ServeState
from .settings import Settings

log = logging.getLogger("serve")
CLOSE_S = 0.5  # of the drain timeout, kept for answering the last requests and closing connections


class DrainingServer(uvicorn.Server):
    """uvicorn whose first SIGTERM/SIGINT drains within ``--drain-timeout-s``; see the module docstring."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, settings: Settings) -> None:
        super().__init__(config)
        self.settings = settings
        self.state: ServeState = app.state.serve  # serve.api.app.create_app's typed state
        self._drain_task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or self.should_exit:
            if sig == signal.SIGINT:  # second Ctrl+C: stop now
                self.force_exit = True
            self.should_exit = True
            return
        service = self.state.service
        if service is not None:
            service.draining = True
        self.state.repository.draining = True  # every model version: readiness 503, new requests 503
        log.info("signal %s: draining (readiness 503, finishing in-flight requests)", signal.Signals(sig).name)
        self._drain_task = asyncio.get_event_loop().create_task(self._drain(time.monotonic()))

    async def _drain(self, started: float) -> None:
        state, s = self.state, self.settings
        deadline = started + s.drain_timeout_s
        close_s = min(CLOSE_S, s.drain_timeout_s / 4)
        while time.monotonic() < deadline - close_s:
            if state.in_flight == 0 and time.monotonic() - started >= s.drain_grace_s:
                break
            await asyncio.sleep(0.02)
        else:
            if state.in_flight:
                log.warning(
                    "drain timeout (%g s): answering %d request(s) still in flight with 503",
                    s.drain_timeout_s,
                    state.in_flight,
                )
            state.abort.set()
            while state.in_flight and time.monotonic() < deadline - close_s / 2:
                await asyncio.sleep(0.01)
        # uvicorn's own graceful wait gets what is left, so the exit stays within the drain timeout.
        self.config.timeout_graceful_shutdown = max(0.05, deadline - time.monotonic())
        log.info("drained in %.2f s; exiting", time.monotonic() - started)
        self.should_exit = True


def make_server(app: FastAPI, settings: Settings) -> DrainingServer:
    """uvicorn for ``app`` with the settings' address, head limits and timeouts."""
    metrics = app.state.serve.metrics
    limits = Limits(settings.max_header_bytes, settings.max_headers, settings.header_timeout_s)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.drain_timeout_s,
        **uvicorn_options(
            limits,
            settings.keep_alive_timeout_s,
            on_refused=lambda status: metrics.requests.labels("(before the app)", str(status)).inc(),
        ),
    )
    return DrainingServer(config, app, settings)
