"""Serving: FastAPI ten-crop classification with crop-level dynamic batching.

``python -m serve --model PATH``; ``create_app(settings)`` for embedding. Three jobs, three folders:
``serve.api`` (HTTP: app, routes, KServe v2, errors, middleware), ``serve.engine`` (one model version: decoding,
batcher, backend, precision) and ``serve.repository`` (which versions are loaded, swapped and retired). Beside them:
``settings`` (CLI + env), ``server`` (uvicorn and the drain), ``metrics`` and ``logs``.
"""

from .api.app import create_app
from .settings import Settings, settings_from

__all__ = ["Settings", "create_app", "settings_from"]
