"""The HTTP layer: ``create_app(settings) -> FastAPI`` with /classify, /v2 (KServe), /healthz, /readyz, /metrics,
/docs and the upload page at /.

Routes live in ``serve.api.routes`` and ``serve.api.kserve`` (APIRouters); admission (readiness, in-flight accounting)
in ``serve.api.routing``; what they share (error answers, API key, deadlines) in ``serve.api.http``; middleware in
``serve.api.middleware``.
The app's state is one typed ``serve.api.state.ServeState`` (the lifespan yields it); models are reached only through
its ``ModelRepository`` (``--model`` is a one-model repository); the app never touches ONNX Runtime, TensorRT or
torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from resnet.runtime.runner import Runner

from ..metrics import Metrics
from ..repository.manager import ModelRepository
from ..settings import Settings
from ..siblings import SiblingForwarder, is_worker
from .http import ApiError, error_response, install_error_handlers
from .kserve import repository_router
from .kserve import routers as kserve_routers
from .middleware import AccessLogMiddleware, BodyLimitMiddleware, ShutdownGuard
from .routes import classify_router, docs_router, ops_router
from .state import ServeState

__all__ = ["ApiError", "create_app", "error_response"]
log = logging.getLogger("serve.api.app")


def _lifespan(state: ServeState, backend: Runner | None):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, ServeState]]:
        repo, metrics = state.repository, state.metrics
        metrics.watch_versions(lambda: [v for m in repo.models.values() for v in m.versions.values()])
        task = asyncio.create_task(_run_repository(repo, backend))
        shapes = metrics.batch_shapes  # the default model's serving version
        metrics.gauge_function(shapes.labels("warm"), lambda: float(_service_shapes(state)[0]))
        metrics.gauge_function(shapes.labels("cold"), lambda: float(_service_shapes(state)[1]))
        try:
            yield {"serve": state}
        finally:
            repo.draining = True
            if state.service is not None:
                state.service.draining = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await repo.close()

    return lifespan


class StaticFallback:
    """The upload page and its files, served where no route matches. Not a ``Mount`` at ``/``: a mount matches every
    path fully, so it would answer ``GET /classify`` or ``OPTIONS /v2/.../infer`` itself (404, ``Allow: GET, HEAD``)
    instead of the router's 405 with ``Allow: POST``."""

    path = ""  # what the access log and request metrics read from scope["route"]: "/ (static)"

    def __init__(self, directory: Path) -> None:
        self.files = StaticFiles(directory=directory, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        await self.files(scope, receive, send)


async def _run_repository(repo: ModelRepository, backend: Runner | None) -> None:
    """Load what there is (``--model``: its one version; ``backend`` already opened), then follow the folder (poll
    mode)."""
    await repo.start(backend)
    log.info("models: %s", json.dumps(repo.index()))
    await repo.follow()


def _service_shapes(state: ServeState) -> tuple[int, int]:
    """(warm, cold) batch shapes of the default model's serving version; (0, 0) before one is loaded."""
    service = state.service
    if service is None:
        return 0, 0
    return service.warm_shapes, len(service.shapes) - service.warm_shapes


def create_app(settings: Settings, backend: Runner | None = None) -> FastAPI:
    """The FastAPI app. ``backend``: ``--model``'s backend, already opened and checked (opened in the lifespan when
    not given)."""
    metrics = Metrics(lambda: float(repo.pending_crops))

    def on_change() -> None:  # the backend info gauge follows the default model's serving version
        service = repo.default_service()
        if service is not None:
            metrics.set_backend(service.backend)

    repo = ModelRepository(
        settings, on_batch=lambda v: metrics.model_batch_observer(v.model, v.label), on_change=on_change
    )
    state = ServeState(settings, metrics, repo)
    app = FastAPI(
        title="resnet-stack serve",
        description="Ten-crop ResNet classification (He et al. 2016) with crop-level dynamic batching.",
        version="0.1.0",
        lifespan=_lifespan(state, backend),
        docs_url=None,  # /docs and /openapi.json are serve.api.routes' own, behind the API key unless --public-metrics
        redoc_url=None,
        openapi_url=None,
    )
    app.state.serve = state  # the one attribute; routes read the lifespan's copy (serve.api.state.state_of)
    install_error_handlers(app)
    for router in (classify_router, ops_router, docs_router, *kserve_routers, repository_router):
        app.include_router(router)
    web_dir = Path(settings.web_dir) if settings.web_dir else None
    if web_dir is not None and web_dir.is_dir():
        app.router.default = StaticFallback(web_dir)
    # Middleware, innermost first.
    if settings.origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(ShutdownGuard, abort=state.abort)
    app.add_middleware(AccessLogMiddleware, metrics=state.metrics)
    if is_worker():  # one of --workers N: repository loads/unloads reach the sibling workers too
        app.add_middleware(SiblingForwarder)
    return app
