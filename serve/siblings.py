"""One worker of a ``--workers N`` server (``serve.workers`` starts them): its sockets, its siblings, its parent.

A worker is today's whole server (``python -m serve ... --workers 1``) run with four environment variables from the
supervisor: ``RESNET_SERVE_WORKER_FD`` (the shared TCP socket the supervisor bound, inherited), ``_SOCKET`` (this
worker's private unix socket, where siblings reach it), ``_DIR`` (the folder holding every worker's socket) and
``_TOKEN`` (a random secret, one per server). ``SiblingForwarder`` passes a model repository load/unload that
succeeded here on to every sibling, marked with that token so they do not pass it on again; a mark from anyone else (a
client over TCP, a wrong token) is ignored, so no client can keep a load on one worker. ``watch_parent`` refreshes the
metrics gauges and drains the worker when the supervisor is gone.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("serve.workers")
ENV_FD, ENV_SOCKET, ENV_DIR = "RESNET_SERVE_WORKER_FD", "RESNET_SERVE_WORKER_SOCKET", "RESNET_SERVE_WORKER_DIR"
ENV_TOKEN = "RESNET_SERVE_WORKER_TOKEN"  # the supervisor's per-server secret: the only value FORWARDED is honoured with
FORWARDED = "x-resnet-serve-forwarded"  # header on a request one worker passes to its siblings, its value the token
FORWARD_PATH = re.compile(r"^/v2/repository/models/[^/]+/(load|unload)$")
PASSED_HEADERS = (b"authorization", b"x-api-key", b"content-type")


def is_worker() -> bool:
    """True in a worker process started by the ``--workers N`` supervisor."""
    return ENV_FD in os.environ


def worker_sockets() -> list[socket.socket] | None:
    """The shared TCP socket and this worker's private unix socket (bound now); None outside a worker."""
    if not is_worker():
        return None
    shared = socket.socket(fileno=int(os.environ[ENV_FD]))
    path = Path(os.environ[ENV_SOCKET])
    path.unlink(missing_ok=True)
    private = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    private.bind(str(path))
    os.chmod(path, 0o600)
    private.listen(128)  # siblings' connections wait in the backlog until uvicorn accepts, never refused
    return [shared, private]


def sibling_paths() -> list[Path]:
    """Every other worker's private socket that exists now."""
    own = Path(os.environ[ENV_SOCKET])
    return sorted(p for p in Path(os.environ[ENV_DIR]).glob("worker-*.sock") if p != own)


def forwarded_by_sibling(scope: Scope, token: str) -> bool | None:
    """Whether this request is a sibling's forward: True when it carries ``FORWARDED`` with the per-server ``token``
    and came over a unix socket (uvicorn's ``scope["server"]`` is ``(path, None)`` there, ``(host, port)`` on TCP);
    None when it carries the header but is not one (a forgery, to be treated as a client's request); False without it.
    """
    values = [v for k, v in scope.get("headers") or [] if k == FORWARDED.encode()]
    if not values:
        return False
    server = scope.get("server")
    over_unix = server is None or server[1] is None
    genuine = bool(token) and len(values) == 1 and hmac.compare_digest(values[0], token.encode("latin-1"))
    return True if genuine and over_unix else None


async def post_unix(path: Path, target: str, headers: list[tuple[bytes, bytes]], timeout: float, token: str) -> int:
    """POST ``target`` (empty body) over the unix socket ``path``, marked with ``token``; the status code, or 0 when
    it could not answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except (OSError, asyncio.TimeoutError):
        return 0
    head = [
        f"POST {target} HTTP/1.1",
        "Host: worker",
        "Content-Length: 0",
        "Connection: close",
        f"{FORWARDED}: {token}",
    ]
    head += [f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in headers]
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        return 0
    finally:
        writer.close()


class SiblingForwarder:
    """ASGI middleware: a repository load/unload that answered 200 here is sent to every sibling worker (and waited
    for) before the answer goes back, so every worker serves what the client asked for once it has its 200. Only a
    sibling's forward (``forwarded_by_sibling``) is not sent on; a client's ``FORWARDED`` header is ignored (and not
    passed along: siblings get the real token)."""

    def __init__(self, app: ASGIApp, timeout_s: float = 600.0, token: str | None = None) -> None:
        self.app, self.timeout_s = app, timeout_s
        # The supervisor always sets it; without one, a forward could not be told from a client's request.
        self.token = os.environ.get(ENV_TOKEN, "") if token is None else token
        if not self.token:
            raise RuntimeError(f"{ENV_TOKEN} is empty: sibling forwards could not be told from a client's")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        forward = (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and FORWARD_PATH.match(scope.get("path", "")) is not None
        )
        if not forward:
            return await self.app(scope, receive, send)
        by_sibling = forwarded_by_sibling(scope, self.token)
        if by_sibling:
            return await self.app(scope, receive, send)
        if by_sibling is None:
            client = scope.get("client")
            log.warning(
                "%s from %s: %s header not honoured (not a sibling's forward); treated as a client's request",
                scope["path"],
                f"{client[0]}:{client[1]}" if client else "a unix socket",
                FORWARDED,
            )
        headers = dict(scope.get("headers") or [])
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self.app(scope, receive, hold)
        if held and held[0]["type"] == "http.response.start" and held[0]["status"] == 200:
            passed = [(k, v) for k, v in headers.items() if k in PASSED_HEADERS]
            query = scope.get("query_string", b"").decode("latin-1")
            target = scope["path"] + (f"?{query}" if query else "")
            paths = sibling_paths()
            answers = await asyncio.gather(*(post_unix(p, target, passed, self.timeout_s, self.token) for p in paths))
            for path, status in zip(paths, answers):
                if status != 200:
                    log.warning("%s on sibling %s answered %s", target, path.name, status or "nothing")
        for message in held:
            await send(message)


def watch_parent(refresh: Callable[[], None], every_s: float = 0.5) -> threading.Thread:
    """A daemon thread: ``refresh()`` the metrics every ``every_s``; SIGTERM to this worker (its drain) once the
    supervisor that started it is gone, so no worker outlives it."""
    parent = os.getppid()

    def loop() -> None:
        while True:
            try:
                refresh()
            except Exception:  # a refresh must never stop the watch; the log says why
                log.exception("metrics refresh failed")
            if os.getppid() != parent:
                log.warning("the supervisor (pid %d) is gone: draining", parent)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            threading.Event().wait(every_s)

    thread = threading.Thread(target=loop, name="serve-worker-watch", daemon=True)
    thread.start()
    return thread
