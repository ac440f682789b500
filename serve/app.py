"""The HTTP layer: ``create_app(settings) -> FastAPI`` with /classify, /healthz, /readyz, /metrics, /docs and /.

It talks to the model only through ``app.state.service`` (``serve.service.ClassifyService``); it never touches
ONNX Runtime, TensorRT or torch. Errors always have the shape ``{"error": {"code", "message"}}`` (DESIGN.md §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .backends import Backend, load_backend
from .batcher import BackendFailed, QueueFull
from .kserve import create_router as kserve_router
from .metrics import Metrics
from .schemas import ClassifyResponse, ErrorResponse, Health, ImageResult, Timings
from .service import ClassifyService, ImageError
from .settings import Settings

log = logging.getLogger("serve.app")
access_log = logging.getLogger("serve.access")

RAW_TYPES = ("image/", "application/octet-stream")
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse, "description": d}
    for s, d in {
        400: "undecodable image",
        401: "missing or wrong API key",
        413: "body or image too large",
        415: "not an accepted image format",
        422: "bad parameters",
        503: "queue full, warming up or draining",
        504: "deadline passed",
    }.items()
}


class ApiError(Exception):
    """An error answer: HTTP status, code and message, plus optional headers (Retry-After, WWW-Authenticate)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes: at once from Content-Length, else while the chunks arrive (413)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit or declared < 0:
                    msg = f"request body of {value.decode('latin-1')} bytes is over the limit of {self.limit}"
                    if declared < 0:
                        msg = "invalid Content-Length"
                    response = error_response(
                        413 if declared > 0 else 400,
                        "body_too_large" if declared > 0 else "bad_request",
                        msg,
                        {"Connection": "close"},
                    )
                    return await response(scope, receive, send)
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(f"request body is over the limit of {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


class AccessLogMiddleware:
    """One JSON access-log line and a route/status count per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            route_path = getattr(route, "path", None)
            route_path = "unmatched" if route_path is None else (route_path or "/ (static)")
            self.metrics.requests.labels(route_path, str(status)).inc()
            client = scope.get("client")
            access_log.info(
                json.dumps(
                    {
                        "ts": round(time.time(), 3),
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "query": scope.get("query_string", b"").decode("latin-1"),
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        "client": f"{client[0]}:{client[1]}" if client else None,
                        "route": route_path,
                    }
                )
            )


def _service(request: Request) -> ClassifyService:
    return request.app.state.service


bearer = HTTPBearer(auto_error=False, description="the server's API key, when one is set")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key, when one is set")


def require_api_key(
    request: Request,
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
    header_key: str | None = Depends(api_key_header),
) -> None:
    """With ``--api-key`` set, accept ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (constant-time compare)."""
    expected: str = request.app.state.settings.api_key
    if not expected:
        return
    given = header_key or (creds.credentials if creds else None)
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)",
            {"WWW-Authenticate": "Bearer"},
        )


async def _read_images(request: Request, settings: Settings) -> tuple[list[bytes], list[str | None]]:
    """The request's images: multipart ``file`` fields, or one raw body with an image content type."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=settings.max_images + 1, max_fields=100)
        files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        if not files:
            raise ApiError(422, "no_image", "multipart body has no 'file' field holding an image")
        if len(files) > settings.max_images:
            raise ApiError(
                413, "too_many_images", f"{len(files)} images in one request; the limit is {settings.max_images}"
            )
        data = [await f.read() for f in files]
        names = [f.filename for f in files]
        await form.close()
        return data, names
    if ctype.startswith(RAW_TYPES):
        return [await request.body()], [None]
    raise ApiError(
        415,
        "unsupported_media_type",
        f"send multipart/form-data with 'file' fields or a raw image body (image/*), not {ctype or 'no content type'}",
    )


async def _until_disconnect(request: Request) -> None:
    """Return when the client goes away (after the body has been read, receive() only reports that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(settings: Settings, backend: Backend | None = None) -> FastAPI:
    """The FastAPI app. ``backend`` is loaded from ``settings.model`` in the lifespan when not given."""

    metrics_holder: dict[str, Metrics] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = backend
        if loaded is None:
            loaded = await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: load_backend(
                    settings.model, settings.backend, threads=settings.threads, torch_precision=settings.torch_precision
                ),
            )
        service = ClassifyService(loaded, settings, on_batch=metrics.observe_batch)
        app.state.service = service
        app.state.failed = None

        async def warm() -> None:
            try:
                await service.start()
            except Exception as e:  # readiness says why; the process stays up for /healthz and the logs
                app.state.failed = f"warm-up failed: {type(e).__name__}: {e}"
                log.exception("warm-up failed")

        warm_task = asyncio.create_task(warm())
        try:
            yield
        finally:
            service.draining = True
            warm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm_task
            await service.close()

    app = FastAPI(
        title="resnet-stack serve",
        description="Ten-crop ResNet classification (He et al. 2016) with crop-level dynamic batching.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = None
    app.state.in_flight = 0
    metrics = Metrics(lambda: float(app.state.service.pending_crops) if app.state.service else 0.0)
    metrics_holder["m"] = metrics
    app.state.metrics = metrics

    # ---- errors: one JSON shape for ours and the framework's --------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, "body_too_large", str(exc), {"Connection": "close"})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_response(422, "invalid_parameter", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, "internal_error", "internal server error (logged)")

    # ---- routes ----------------------------------------------------------------------------------------------
    @app.post(
        "/classify",
        response_model=ClassifyResponse,
        responses=ERRORS,
        dependencies=[Depends(require_api_key)],
        summary="Classify images: ten-crop (or centre-crop) top-k",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                            "required": ["file"],
                        }
                    },
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def classify(
        request: Request,
        topk: int = Query(5, ge=1, le=1000, description="how many classes per image"),
        crops: Literal["ten", "center"] = Query("ten", description="ten-crop (paper) or centre crop"),
    ) -> ClassifyResponse:
        started = time.perf_counter()
        deadline = started + settings.request_timeout_s
        service = _service(request)
        if service is None or not service.ready or service.draining or app.state.failed:
            why = "draining" if service is not None and service.draining else "warming up"
            metrics.rejected.labels(why).inc()
            raise ApiError(503, "unavailable", f"server is {why}; retry shortly", {"Retry-After": "1"})
        if topk > len(service.labels):
            raise ApiError(422, "invalid_parameter", f"topk: must be <= {len(service.labels)} (the model's classes)")
        app.state.in_flight += 1
        metrics.in_flight.inc()
        try:
            try:
                images, names = await asyncio.wait_for(_read_images(request, settings), deadline - time.perf_counter())
            except asyncio.TimeoutError:
                raise ApiError(504, "deadline_exceeded", "request body not received within the deadline") from None
            work = asyncio.ensure_future(service.classify(images, crops, topk))
            gone = asyncio.ensure_future(_until_disconnect(request))
            try:
                done, _ = await asyncio.wait(
                    {work, gone}, timeout=max(0.0, deadline - time.perf_counter()), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                gone.cancel()
            if work not in done:
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                if gone in done:
                    metrics.rejected.labels("client_gone").inc()
                    return Response(status_code=499)  # nobody is listening; the crops left the queue
                metrics.rejected.labels("deadline").inc()
                raise ApiError(
                    504, "deadline_exceeded", f"no answer within the {settings.request_timeout_s:g} s deadline"
                )
            try:
                out = work.result()
            except QueueFull as e:
                metrics.rejected.labels("queue_full").inc()
                raise ApiError(503, "queue_full", f"server busy: {e}; retry shortly", {"Retry-After": "1"}) from None
            except BackendFailed as e:
                raise ApiError(503, "backend_failed", f"inference failed: {e}", {"Retry-After": "1"}) from None
        finally:
            app.state.in_flight -= 1
            metrics.in_flight.dec()
        total = time.perf_counter() - started
        for stage, secs in (
            ("decode", out.decode_s),
            ("queue", out.queue_s),
            ("inference", out.inference_s),
            ("total", total),
        ):
            metrics.latency.labels(stage).observe(secs)
        metrics.images.inc(len(images))
        return ClassifyResponse(
            model=service.card.name,
            backend=service.backend_name,
            precision=service.precision,
            crops=crops,
            results=[ImageResult(filename=n, topk=r) for n, r in zip(names, out.results)],
            timings=Timings(
                decode_ms=out.decode_s * 1e3,
                queue_ms=out.queue_s * 1e3,
                inference_ms=out.inference_s * 1e3,
                total_ms=total * 1e3,
            ),
            batch_sizes=out.batch_sizes,
        )

    @app.api_route("/classify", methods=["GET", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    async def classify_wrong_method(request: Request) -> JSONResponse:
        return error_response(405, "method_not_allowed", f"{request.method} /classify: use POST", {"Allow": "POST"})

    @app.get("/healthz", response_model=Health, summary="Process alive")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}}, summary="Loaded and warmed up")
    async def readyz(request: Request) -> Any:
        service = _service(request)
        if app.state.failed:
            return JSONResponse(Health(status="failed", detail=app.state.failed).model_dump(), status_code=503)
        if service is None or not service.ready or service.draining:
            state = "draining" if service is not None and service.draining else "warming_up"
            return JSONResponse(Health(status=state).model_dump(), status_code=503, headers={"Retry-After": "1"})
        return Health(
            status="ready", model=service.card.name, backend=service.backend_name, precision=service.precision
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(kserve_router(require_api_key))  # KServe v2 / Open Inference Protocol (serve/kserve.py)

    web_dir = Path(settings.web_dir) if settings.web_dir else None
    if web_dir is not None and web_dir.is_dir():
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")

    # ---- middleware (outermost last) -------------------------------------------------------------------------
    if settings.origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(AccessLogMiddleware, metrics=metrics)
    return app
