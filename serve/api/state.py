"""The application's state, typed: what ``create_app`` builds and the lifespan yields (``{"serve": ServeState}``),
read by routes as ``state_of(request)`` and by the drain as ``app.state.serve``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from ..engine.service import ClassifyService
from ..metrics import Metrics
from ..repository.manager import ModelRepository
from ..settings import Settings


@dataclass(eq=False)
class ServeState:
    """Settings, metrics, the model repository (``--model`` is a one-model repository), the drain's abort event and
    the count of requests in flight."""

    settings: Settings
    metrics: Metrics
    repository: ModelRepository
    abort: asyncio.Event = field(default_factory=asyncio.Event)  # set at the drain deadline: still running -> 503
    in_flight: int = 0

    @property
    def service(self) -> ClassifyService | None:
        """The default model's serving version's service (readiness, /healthz, /classify without a model)."""
        return self.repository.default_service()

    @property
    def failed(self) -> str | None:
        """Why the server cannot serve until restarted (``--model``'s version did not open or warm up)."""
        return self.repository.failed


def state_of(conn: HTTPConnection) -> ServeState:
    """The state the lifespan yielded, for one request."""
    return conn.state.serve
