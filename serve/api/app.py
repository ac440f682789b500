"""The HTTP layer: ``create_app(settings) -> FastAPI`` with /classify, /v2 (KServe), /healthz, /readyz, /metrics,
/docs and the upload page at /.

Routes live in ``serve.api.routes`` and ``serve.api.kserve`` (APIRouters); what they share (error answers, API key, the
``admit`` dependency for readiness and in-flight accounting) in ``serve.api.http``; middleware in ``serve.api.middleware``.
The app talks to the model only through ``app.state.service`` (``serve.service.ClassifyService``); it never touches
ONNX Runtime, TensorRT or torch.
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

from ..engine.precision import select_backend
from ..engine.service import ClassifyService
from ..metrics import Metrics
from ..repository.manager import ModelRepository
from ..settings import Settings
from ..siblings import SiblingForwarder, is_worker
from .http import ApiError, error_response, install_error_handlers
from .kserve import repository_router
from .kserve import routers as kserve_routers
from .middleware import AccessLogMiddleware, BodyLimitMiddleware, ShutdownGuard
from .routes import classify_router, docs_router, ops_router

__all__ = ["ApiError", "create_app", "error_response"]
log = logging.getLogger("serve.api.app")


def _lifespan(settings: Settings, backend: Runner | None):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics: Metrics = app.state.metrics
        repo = ModelRepository(
            settings,
            on_batch=lambda v: metrics.model_batch_observer(v.model, v.label),
            on_change=lambda: _on_repository_change(app),
        )
        app.state.repository = repo
        metrics.watch_versions(lambda: [v for m in repo.models.values() for v in m.versions.values()])
        tasks = [
            asyncio.create_task(_serve_repository(repo) if settings.model_repository else _serve_one(app, backend))
        ]
        shapes = metrics.batch_shapes  # the default model's serving version (app.state.service)
        metrics.gauge_function(shapes.labels("warm"), lambda: float(_service_shapes(app)[0]))
        metrics.gauge_function(shapes.labels("cold"), lambda: float(_service_shapes(app)[1]))
        try:
            yield
        finally:
            repo.draining = True
            if app.state.service is not None:
                app.state.service.draining = True
            for task in tasks:
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


async def _serve_one(app: FastAPI, backend: Runner | None) -> None:
    """``--model``: load (unless given), register as the one-model repository, warm up; failure -> /healthz 503."""
    settings, metrics, repo = app.state.settings, app.state.metrics, app.state.repository
    loaded = backend
    if loaded is None:
        loaded = await asyncio.get_running_loop().run_in_executor(None, select_backend, settings)
    metrics.set_backend(loaded)
    name = loaded.card.name
    service = ClassifyService(loaded, settings, on_batch=metrics.model_batch_observer(name, "1"))
    repo.add_single(name, service)
    try:
        await service.start()
    except Exception as e:  # /healthz and /readyz say why (503); the log has one line
        app.state.failed = f"warm-up failed: {type(e).__name__}: {e}"
        log.error("%s", app.state.failed)


async def _serve_repository(repo: ModelRepository) -> None:
    """``--model-repository``: load what is there, then (poll mode) follow the folder."""
    await repo.start()
    log.info("model repository %s: %s", repo.root, json.dumps(repo.index()))
    if repo.settings.model_control_mode == "poll":
        await repo.poll_forever()


def _service_shapes(app: FastAPI) -> tuple[int, int]:
    """(warm, cold) batch shapes of the service ``app.state.service`` names now; (0, 0) before one is loaded."""
    service = app.state.service
    if service is None:
        return 0, 0
    return service.warm_shapes, len(service.shapes) - service.warm_shapes


def _on_repository_change(app: FastAPI) -> None:
    """Keep ``app.state.service`` (readiness, /healthz, the drain) on the default model's serving version."""
    repo: ModelRepository = app.state.repository
    service = repo.default_service()
    app.state.service = service
    if repo.root is not None and service is not None:
        app.state.metrics.set_backend(service.backend)


def create_app(settings: Settings, backend: Runner | None = None) -> FastAPI:
    """The FastAPI app. ``backend`` is loaded from ``settings.model`` in the lifespan when not given."""
    app = FastAPI(
        title="resnet-stack serve",
        description="Ten-crop ResNet classification (He et al. 2016) with crop-level dynamic batching.",
        version="0.1.0",
        lifespan=_lifespan(settings, backend),
        docs_url=None,  # /docs and /openapi.json are serve.api.routes' own, behind the API key unless --public-metrics
        redoc_url=None,
        openapi_url=None,
    )
    state = app.state
    state.settings, state.service, state.failed, state.in_flight = settings, None, None, 0
    state.repository = None  # serve.repository.ModelRepository, made in the lifespan
    state.abort = asyncio.Event()  # set at the drain deadline: requests still running are answered 503
    state.metrics = Metrics(lambda: float(state.repository.pending_crops) if state.repository else 0.0)
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
