"""``python -m serve --model PATH [--backend auto|tensorrt|cuda|onnxruntime|torch] [--host] [--port] ...``
``python -m serve --model-repository DIR [--model-control-mode none|poll|explicit] ...`` (serve.repository.manager)
``python -m serve ... --workers N``: N such servers on one port under a supervisor (serve.workers)

Loads the model and checks that its card agrees with the graph by one real inference (a bad artifact is one clear
line and a non-zero exit, before any port is opened), then runs uvicorn (``serve.server``) with every log line
JSON (``serve.logs``). SIGTERM/SIGINT drain within ``--drain-timeout-s``; a second SIGINT forces the exit.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from resnet import run_cli

from .api.app import create_app
from .logs import JsonFormatter, StderrToLog, json_logs, setup_logging
from .repository.lifecycle import open_source
from .server import DrainingServer, make_server
from .settings import Settings, settings_from
from .siblings import is_worker, watch_parent, worker_sockets
from .workers import supervise, worker_count

__all__ = ["DrainingServer", "JsonFormatter", "main", "setup_logging"]
log = logging.getLogger("serve")


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from(argv)
    setup_logging(settings.log_level)
    workers = worker_count(settings.workers)
    if workers > 1 and not is_worker():
        return supervise(settings, sys.argv[1:] if argv is None else argv, workers)
    if settings.model_repository:
        return _serve_repository(settings)
    # --model FILE, or DIR + --precision, opened by the lifecycle's one opener before any port opens: card vs graph
    # by one real inference (CardError, exit 1, when they disagree); the version then lives as the repository's do
    backend = open_source(settings, settings.model)
    app = create_app(settings, backend)
    server = make_server(app, settings)
    capture = json_logs(settings.log_level)  # from here on every line on stderr is JSON, libraries' too
    log.info("serving %s (%s) on http://%s:%d", backend.card.name, backend.name, settings.host, settings.port)
    return _run(server, capture)


def _run(server: DrainingServer, capture: StderrToLog) -> int:
    """Serve until drained: on the settings' address, or in a ``--workers`` worker on the supervisor's sockets."""
    sockets = worker_sockets()
    if sockets is not None:
        watch_parent(server.state.metrics.refresh)
    try:
        server.run(sockets=sockets)
    finally:
        capture.restore()
    return 0 if server.started else 1


def _serve_repository(settings: Settings) -> int:
    """``--model-repository``: the port opens at once; models load in the background (POST /v2/repository/index
    says how each one is doing, /readyz turns 200 when one is ready)."""
    app = create_app(settings)
    server = make_server(app, settings)
    capture = json_logs(settings.log_level)
    log.info(
        "serving the model repository %s (model control mode %s) on http://%s:%d",
        settings.model_repository,
        settings.model_control_mode,
        settings.host,
        settings.port,
    )
    return _run(server, capture)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, prog="python -m serve"))
