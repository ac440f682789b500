"""Prometheus metrics (prometheus-client), one registry per app so several apps can live in one process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 10, 16, 20, 30, 32, 40, 50, 60, 64, 96, 128, 256)


class Metrics:
    """Requests by route and status, per-stage latency, batch sizes, queue depth, images and crops served."""

    def __init__(self, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "resnet_serve_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "resnet_serve_stage_seconds",
            "Latency of /classify per stage (decode, queue, inference, total)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "resnet_serve_batch_size", "Crops per backend batch (before padding)", buckets=BATCH_BUCKETS, registry=r
        )
        self.padded_batch_size = Histogram(
            "resnet_serve_padded_batch_size",
            "Backend batch shape run (after padding)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "resnet_serve_batch_seconds", "Backend time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("resnet_serve_queue_crops", "Crops waiting for a batch", registry=r)
        self.queue_depth.set_function(queue_depth)
        self.batch_shapes = Gauge(
            "resnet_serve_batch_shapes",
            "Batch shapes by state: warm, or cold (ready after the first is warm; the others warm in the background "
            "while the queue is empty, and batches use warm shapes only)",
            ["state"],
            registry=r,
        )
        self.in_flight = Gauge("resnet_serve_in_flight_requests", "/classify requests being handled", registry=r)
        self.images = Counter("resnet_serve_images", "Images classified", registry=r)
        self.crops = Counter("resnet_serve_crops", "Crops run through the backend", registry=r)
        self.rejected = Counter("resnet_serve_rejected", "Requests turned away, by reason", ["reason"], registry=r)
        self.backend_info = Gauge(
            "resnet_serve_backend_info",
            "What actually runs the model (1 on the one series): backend, provider as its runtime names it, precision",
            ["backend", "provider", "precision"],
            registry=r,
        )

    def set_backend(self, backend: Any) -> None:
        """Report the loaded backend (``kind``, ``provider``, ``precision``) as the one series of the info gauge."""
        self.backend_info.clear()
        kind = getattr(backend, "kind", backend.name.split(":")[0])
        provider = getattr(backend, "provider", backend.name)
        self.backend_info.labels(kind, provider, getattr(backend, "precision", backend.card.precision)).set(1)

    def observe_batch(self, n: int, padded: int, seconds: float) -> None:
        self.batch_size.observe(n)
        self.padded_batch_size.observe(padded)
        self.batch_seconds.observe(seconds)
        self.crops.inc(n)
