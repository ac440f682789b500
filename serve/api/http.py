"""What every route shares: the error answers (one place turns each failure into its status and body), the API-key
checks and the deadline/disconnect guard. Admission (readiness and in-flight accounting, which the SIGTERM drain waits
for) is ``serve.api.routing``'s ``admit_model`` / ``admit_v2``.

Error bodies: ``{"error": {"code", "message"}}`` (docs/DESIGN.md §4) everywhere except under ``/v2``, where the
Open Inference Protocol's clients expect ``{"error": "message"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..engine.batcher import BackendFailed, QueueFull
from ..engine.decode import DecodeQueueFull
from ..engine.service import ImageError
from .state import state_of
from .v2_schema import V2Error

log = logging.getLogger("serve.api.app")
T = TypeVar("T")
CLIENT_GONE = 499  # nginx's status for "client closed the request": counted, never sent


class ApiError(Exception):
    """An error answer: HTTP status, code and message, plus optional headers (Retry-After, WWW-Authenticate)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class BodyTooLarge(Exception):
    """Raised while reading a body past ``--max-body-bytes``."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready: its work was cancelled; nobody gets an answer."""


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def answer(request: Request | None, status: int, code: str, message: str, headers: dict[str, str] | None = None):
    """An error in the shape the route's protocol uses (the Open Inference Protocol's under /v2)."""
    if request is not None and request.url.path.startswith("/v2"):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return error_response(status, code, message, headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure a request can meet, as one JSON answer; only a bug is a 500 (and logged with its traceback)."""

    def on(kind: type[BaseException]):
        return lambda fn: app.add_exception_handler(kind, fn) or fn

    @on(ApiError)
    async def _api(request: Request, e: ApiError) -> Response:
        return answer(request, e.status, e.code, e.message, e.headers)

    @on(V2Error)
    async def _v2(request: Request, e: V2Error) -> Response:
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)

    @on(ImageError)
    async def _image(request: Request, e: ImageError) -> Response:
        return answer(request, e.status, e.code, e.message)

    @on(QueueFull)
    async def _full(request: Request, e: QueueFull) -> Response:
        state_of(request).metrics.rejected.labels("queue_full").inc()
        return answer(request, 503, "queue_full", f"server busy: {e}; retry shortly", {"Retry-After": "1"})

    @on(DecodeQueueFull)
    async def _decode_full(request: Request, e: DecodeQueueFull) -> Response:
        state_of(request).metrics.rejected.labels("decode_queue_full").inc()
        return answer(request, 503, "queue_full", f"server busy: {e}; retry shortly", {"Retry-After": "1"})

    @on(BackendFailed)
    async def _backend(request: Request, e: BackendFailed) -> Response:
        return answer(request, 503, "backend_failed", f"inference failed: {e}", {"Retry-After": "1"})

    @on(BodyTooLarge)
    async def _too_large(request: Request, e: BodyTooLarge) -> Response:
        return answer(request, 413, "body_too_large", str(e), {"Connection": "close"})

    @on(ClientDisconnect)
    @on(ClientGone)
    async def _gone(request: Request, e: Exception) -> Response:
        state_of(request).metrics.rejected.labels("client_gone").inc()
        return Response(status_code=CLIENT_GONE)  # nobody is listening; counted under its own status

    @on(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return answer(request, 422, "invalid_parameter", "; ".join(parts) or "invalid request")

    @on(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        message = str(exc.detail)
        if exc.status_code == 405 and headers and "Allow" in headers:
            message = f"{request.method} {request.url.path}: use {headers['Allow']}"
        return answer(request, exc.status_code, code, message, headers)

    @on(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return answer(request, 500, "internal_error", "internal server error (logged)")


# ---- API key -------------------------------------------------------------------------------------------------------

bearer = HTTPBearer(auto_error=False, description="the server's API key, when one is set")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key, when one is set")


async def require_api_key(
    request: Request,
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
    header_key: str | None = Depends(api_key_header),
) -> None:
    """With ``--api-key`` set, accept ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (constant-time compare).
    A coroutine, as every dependency of a route is: FastAPI runs a plain ``def`` dependency in a worker thread, a
    thread hop per request for a few microseconds of work (0.13 ms of GIL per request, ``bench.gil_bench --top``)."""
    expected: str = state_of(request).settings.api_key
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


async def require_api_key_unless_public(request: Request) -> None:
    """/metrics, /docs and the OpenAPI schema: behind the API key too, unless ``--public-metrics``."""
    if state_of(request).settings.public_metrics:
        return
    key = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    creds = (
        HTTPAuthorizationCredentials(scheme="Bearer", credentials=auth[7:]) if auth[:7].lower() == "bearer " else None
    )
    await require_api_key(request, creds, key)


async def _until_disconnect(request: Request) -> None:
    """Return when the client goes away (after the body has been read, receive() only reports that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def within(request: Request, work: Awaitable[T], deadline_s: float, what: str = "answer") -> T:
    """Await ``work`` until it is done, the client disconnects (``ClientGone``) or ``deadline_s`` passes (504).

    Either way out, the work is cancelled: its crops leave the batching queue at once.
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, gone}, timeout=max(0.0, deadline_s), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if gone in done:
        raise ClientGone()
    state_of(request).metrics.rejected.labels("deadline").inc()
    limit = state_of(request).settings.request_timeout_s
    raise ApiError(504, "deadline_exceeded", f"no {what} within the {limit:g} s deadline")


async def read_body(request: Request, deadline_s: float) -> bytes:
    """The whole body within the deadline (504 otherwise); a disconnect mid-body raises ``ClientDisconnect``."""
    try:
        return await asyncio.wait_for(request.body(), max(0.0, deadline_s))
    except asyncio.TimeoutError:
        raise ApiError(504, "deadline_exceeded", "request body not received within the deadline") from None


def openapi_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for the OpenAPI schema: each status with our error body."""
    from .schemas import ErrorResponse

    words = {
        400: "bad request or undecodable image",
        401: "missing or wrong API key",
        413: "body, image or request pixels too large",
        415: "not an accepted image format",
        422: "bad parameters",
        503: "queue full, warming up, draining or failed",
        504: "deadline passed",
    }
    return {s: {"model": ErrorResponse, "description": words[s]} for s in statuses}
