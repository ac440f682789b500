"""Limits before the app: uvicorn's httptools protocol with a cap on the request head (bytes and header count) and
a deadline for finishing it, and JSON answers for what it refuses (instead of uvicorn's plain-text 400).

- head over ``max_header_bytes`` (request line + headers) or more than ``max_headers`` fields: 431, connection
  closed; counted while the bytes arrive, so a 64 MiB header line costs one 64 KiB read, not seconds of parsing.
- head not complete ``header_timeout_s`` after the connection opened or the request's first byte: 408 (or a silent
  close when nothing came), connection closed.
- malformed HTTP: 400 ``{"error": {"code": "bad_request", ...}}``, connection closed.
- idle keep-alive connections: uvicorn's own ``timeout_keep_alive`` (``--keep-alive-timeout-s``).

Without httptools (uvicorn without its [standard] extra) ``uvicorn_options`` falls back to h11 and its
``h11_max_incomplete_event_size`` for the head size.
"""

from __future__ import annotations

import json
import logging
from asyncio import TimerHandle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn without its [standard] extra: h11 and its own head limit
    httptools = HttpToolsProtocol = None  # type: ignore[assignment,misc]

log = logging.getLogger("serve.api.protocol")


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def refusal_bytes(status: int, code: str, message: str) -> bytes:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE

    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    return STATUS_LINE[status] + head + body


def limited_protocol(limits: Limits, on_refused: Callable[[int], None] | None = None) -> type:
    """A subclass of uvicorn's ``HttpToolsProtocol`` enforcing ``limits``; pass it as ``uvicorn.Config(http=...)``."""
    if HttpToolsProtocol is None:
        raise ImportError("httptools is not installed")
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"limits": limits, "on_refused": staticmethod(on_refused) if on_refused else None},
    )


def uvicorn_options(limits: Limits, keep_alive_s: float, on_refused: Callable[[int], None] | None = None) -> dict:
    """Keyword arguments for ``uvicorn.Config`` that apply ``limits`` (httptools when installed, else h11)."""
    options: dict[str, Any] = {"timeout_keep_alive": keep_alive_s, "ws": "none"}
    try:
        options["http"] = limited_protocol(limits, on_refused)
    except ImportError:  # pragma: no cover - uvicorn without httptools
        options.update(http="h11", h11_max_incomplete_event_size=limits.max_header_bytes)
    return options


if HttpToolsProtocol is not None:

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with ``limits`` on the request head; see the module docstring."""

        limits: Limits
        on_refused: Callable[[int], None] | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._in_head, self._head_bytes, self._fields = True, 0, 0
            self._refusal: _Refused | None = None
            self._head_timer: TimerHandle | None = None
            self._arm_head_timer()

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if not self._in_head or self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                self._arm_head_timer()  # a pipelined head while a response is still going out: look again later
                return
            if self._head_bytes:
                msg = f"request headers not complete within {self.limits.header_timeout_s:g} s"
                self._refuse(_Refused(408, "header_timeout", msg))
            else:
                self.transport.close()  # connected and said nothing

        def _refuse(self, e: _Refused) -> None:
            if self.on_refused is not None:
                self.on_refused(e.status)
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            log.warning("refused %s before the app: %d %s", client, e.status, e.message)
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(refusal_bytes(e.status, e.code, e.message))
            self.transport.close()
            self._disarm_head_timer()

        def send_400_response(self, msg: str) -> None:
            self._refuse(_Refused(400, "bad_request", msg))

        def data_received(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            if self._in_head:
                self._head_bytes += len(data)  # an upper bound: the same read may carry body bytes
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._unsupported_upgrade_warning()
            except httptools.HttpParserError as e:
                self._refuse(self._refusal or _Refused(400, "bad_request", f"invalid HTTP request ({e})"[:200]))
                return
            if self._in_head and self._head_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
                msg = f"request head is over the limit of {self.limits.max_header_bytes} bytes"
                self._refuse(_Refused(431, "header_too_large", msg))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._fields = True, 0
            self._arm_head_timer()

        def on_header(self, name: bytes, value: bytes) -> None:
            self._fields += 1
            if self._fields > self.limits.max_headers:
                self._refusal = _Refused(431, "too_many_headers", f"more than {self.limits.max_headers} header fields")
                raise self._refusal
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes = False, 0
            self._disarm_head_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)
