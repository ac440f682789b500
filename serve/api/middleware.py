"""ASGI middleware around the app (outermost first): the access log and request count, the shutdown deadline
guard, and the body-size limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..metrics import Metrics
from .http import CLIENT_GONE, BodyTooLarge, answer

access_log = logging.getLogger("serve.access")


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
                    msg = f"request body of {value.decode('latin-1')[:40]} bytes is over the limit of {self.limit}"
                    if declared < 0:
                        msg = "invalid Content-Length"
                    response = answer(  # the protocol's error shape: KServe's {"error": "..."} under /v2
                        _Path(scope["path"]),
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


class ShutdownGuard:
    """At the drain deadline (``abort`` set), a request still running is cancelled and answered 503 + Retry-After
    in JSON, so no client ever gets uvicorn's plain-text 500 from a shutdown."""

    def __init__(self, app: ASGIApp, abort: asyncio.Event) -> None:
        self.app, self.abort = app, abort

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        inner = asyncio.ensure_future(self.app(scope, receive, watched_send))
        stop = asyncio.ensure_future(self.abort.wait())
        try:
            await asyncio.wait({inner, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if inner.done():
            return inner.result()
        inner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await inner
        if not started:
            response = answer(
                _Path(scope["path"]),
                503,
                "shutting_down",
                "server is shutting down; retry (another replica, or this one after its restart)",
                {"Retry-After": "1", "Connection": "close"},
            )
            await response(scope, receive, send)


class _Path:
    """Just enough of a request for ``answer`` to pick the error shape."""

    def __init__(self, path: str) -> None:
        self.url = self
        self.path = path


class AccessLogMiddleware:
    """One JSON access-log line and a route/status count per request; a client that went away counts as 499."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        sent = gone = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status, sent = message["status"], True
            await send(message)

        async def receive_wrapper() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and not sent:
                gone = True
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception:
            if not gone:
                raise
        finally:
            if gone and status >= 500:
                status = CLIENT_GONE  # the client left before its answer: not a server error
            self._record(scope, status, started)

    def _record(self, scope: Scope, status: int, started: float) -> None:
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
