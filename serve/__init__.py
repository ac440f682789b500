"""Serving: FastAPI ten-crop classification with crop-level dynamic batching.

``python -m serve --model PATH``; ``create_app(settings)`` for embedding. Modules: settings (CLI + env),
backends (TensorRT / ONNX Runtime / torch), batcher (the crop queue), service (images -> top-k), app (HTTP).
"""

from .app import create_app
from .settings import Settings, settings_from

__all__ = ["Settings", "create_app", "settings_from"]
