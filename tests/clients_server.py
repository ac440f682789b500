"""The real server the clients' tests talk to: `python -m serve` on 127.0.0.1, started once per test session.

Every tests/test_clients_*.py module asks for it through `shared_server(checkpoint)`; the process is stopped when
the session's interpreter exits. It runs with an API key and small size limits so that 401 and 413 are reachable.
Starting, waiting for /readyz and stopping are `tests.serve_support.Server`'s, shared with the serving tests.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

from tests.serve_support import Server, free_port

__all__ = ["API_KEY", "MAX_BODY_BYTES", "MAX_PIXELS", "ClientsServer", "free_port", "shared_server", "start_server"]

API_KEY = "test-key-0123"
MAX_PIXELS = 3_000_000  # the sample photos are all below it (retina.jpg is 1411x1411)
MAX_BODY_BYTES = 4_000_000


class ClientsServer(Server):
    """The server with the clients' API key and size limits; settings from these flags only, never the environment."""

    api_key = API_KEY

    def __init__(self, model: Path, log: Path, extra: list[str] | None = None) -> None:
        args = [
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--api-key",
            API_KEY,
            "--max-pixels",
            str(MAX_PIXELS),
            "--max-body-bytes",
            str(MAX_BODY_BYTES),
            "--threads",
            "2",
            "--public-metrics",  # the load generator's tests read /metrics without the key
            "--log-level",
            "warning",
            *(extra or []),
        ]
        super().__init__(args, log_path=log)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RESNET_SERVE_")}


_server: ClientsServer | None = None


def start_server(model: Path, log: Path, extra: list[str] | None = None, timeout: float = 120.0) -> ClientsServer:
    """Start `python -m serve` with the clients' key and limits; wait until /readyz answers 200."""
    return ClientsServer(model, log, extra).start(timeout)


def shared_server(model: Path, log_dir: Path) -> ClientsServer:
    """The session's one server for the clients' tests (started on first use, stopped at exit)."""
    global _server
    if _server is None or _server.proc is None or _server.proc.poll() is not None:
        _server = start_server(model, log_dir / "serve.log")
        atexit.register(_server.stop)
    return _server
