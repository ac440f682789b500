"""The HTTP layer: ``create_app(settings) -> FastAPI`` with /classify, /v2 (KServe), /healthz, /readyz, /metrics,
/docs and the upload page at /.

Routes live in ``serve.routes`` and ``serve.kserve`` (APIRouters); what they share (error answers, API key, the
``admit`` dependency for readiness and in-flight accounting) in ``serve.http``; middleware in ``serve.middleware``.
The app talks to the model only through ``app.state.service`` (``serve.service.ClassifyService``); it never touches
ONNX Runtime, TensorRT or torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from .backends import Backend
from .http import ApiError, error_response, install_error_handlers
from .kserve import routers as kserve_routers
from .metrics import Metrics
from .middleware import AccessLogMiddleware, BodyLimitMiddleware, ShutdownGuard
from .precision import select_backend
from .routes import classify_router, docs_router, ops_router
from .service import ClassifyService
from .settings import Settings

__all__ = ["ApiError", "create_app", "error_response"]
log = logging.getLogger("serve.app")


def _lifespan(settings: Settings, backend: Backend | None):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = backend
        if loaded is None:
            loaded = await asyncio.get_running_loop().run_in_executor(None, select_backend, settings)
        app.state.metrics.set_backend(loaded)
        service = ClassifyService(loaded, settings, on_batch=app.state.metrics.observe_batch)
        app.state.service = service
        shapes = app.state.metrics.batch_shapes
        shapes.labels("warm").set_function(lambda: float(service.warm_shapes))
        shapes.labels("cold").set_function(lambda: float(len(service.shapes) - service.warm_shapes))

        async def warm() -> None:
            try:
                await service.start()
            except Exception as e:  # /healthz and /readyz say why (503); the log has one line
                app.state.failed = f"warm-up failed: {type(e).__name__}: {e}"
                log.error("%s", app.state.failed)

        warm_task = asyncio.create_task(warm())
        try:
            yield
        finally:
            service.draining = True
            warm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm_task
            await service.close()

    return lifespan


def create_app(settings: Settings, backend: Backend | None = None) -> FastAPI:
    """The FastAPI app. ``backend`` is loaded from ``settings.model`` in the lifespan when not given."""
    app = FastAPI(
        title="resnet-stack serve",
        description="Ten-crop ResNet classification (He et al. 2016) with crop-level dynamic batching.",
        version="0.1.0",
        lifespan=_lifespan(settings, backend),
        docs_url=None,  # /docs and /openapi.json are serve.routes' own, behind the API key unless --public-metrics
        redoc_url=None,
        openapi_url=None,
    )
    state = app.state
    state.settings, state.service, state.failed, state.in_flight = settings, None, None, 0
    state.abort = asyncio.Event()  # set at the drain deadline: requests still running are answered 503
    state.metrics = Metrics(lambda: float(state.service.pending_crops) if state.service else 0.0)
    install_error_handlers(app)
    for router in (classify_router, ops_router, docs_router, *kserve_routers):
        app.include_router(router)
    web_dir = Path(settings.web_dir) if settings.web_dir else None
    if web_dir is not None and web_dir.is_dir():
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
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
    return app
