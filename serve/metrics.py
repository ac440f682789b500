"""Prometheus metrics (prometheus-client), one registry per app so several apps can live in one process.

Under ``--workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor) every worker writes its values to files
there and ``render()`` reads all of them (prometheus-client's multiprocess mode): counters and histograms are the sums
over every worker, dead ones included; gauges are the live workers' sum or max (each gauge's ``multiprocess_mode``),
refreshed from their functions at each scrape and every half second (``serve.siblings.watch_parent``). The
per-version gauges (``_VersionCollector``) are the answering worker's: every worker loads the same versions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 10, 16, 20, 30, 32, 40, 50, 60, 64, 96, 128, 256)


class Metrics:
    """Requests by route and status, per-stage latency, batch sizes, queue depth, images and crops served."""

    def __init__(self, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._functions: list[tuple[Any, Callable[[], float]]] = []
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
        self.queue_depth = Gauge(
            "resnet_serve_queue_crops", "Crops waiting for a batch", registry=r, multiprocess_mode="livesum"
        )
        self.gauge_function(self.queue_depth, queue_depth)
        self.batch_shapes = Gauge(
            "resnet_serve_batch_shapes",
            "Batch shapes by state: warm, or cold (ready after the first is warm; the others warm in the background "
            "while the queue is empty, and batches use warm shapes only)",
            ["state"],
            registry=r,
            multiprocess_mode="livemax",  # with several workers: the most of any worker (cold 0 = every one warm)
        )
        self.in_flight = Gauge(
            "resnet_serve_in_flight_requests",
            "/classify requests being handled",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.images = Counter("resnet_serve_images", "Images classified", registry=r)
        self.crops = Counter("resnet_serve_crops", "Crops run through the backend", registry=r)
        self.rejected = Counter("resnet_serve_rejected", "Requests turned away, by reason", ["reason"], registry=r)
        self.backend_info = Gauge(
            "resnet_serve_backend_info",
            "What actually runs the model (1 on the one series): backend, provider as its runtime names it, precision",
            ["backend", "provider", "precision"],
            registry=r,
            multiprocess_mode="livemax",
        )

        # Per model and version (the model repository): the families above stay the server's totals.
        by_version = ["model", "version"]
        self.model_requests = Counter(
            "resnet_serve_model_requests",
            "Inference requests admitted to a model version, by outcome (ok, error)",
            [*by_version, "outcome"],
            registry=r,
        )
        self.model_batch_seconds = Histogram(
            "resnet_serve_model_batch_seconds",
            "Backend time per batch, per model version",
            by_version,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_crops = Counter("resnet_serve_model_crops", "Crops run, per model version", by_version, registry=r)
        self._versions: Callable[[], list[Any]] = list
        r.register(_VersionCollector(lambda: self._versions()))

    def gauge_function(self, gauge: Any, f: Callable[[], float]) -> None:
        """Report ``f()`` as the (labelled child) gauge's value: read at each scrape, and with several workers
        written at each ``refresh()`` so the other workers' scrapes see it."""
        if self.multiprocess:
            self._functions.append((gauge, f))
        else:
            gauge.set_function(f)

    def refresh(self) -> None:
        """Write the function gauges' values now (several workers only; one process reads them at scrape time)."""
        for gauge, f in self._functions:
            gauge.set(float(f()))

    def render(self) -> bytes:
        """The text exposition of /metrics: this app's registry, or with several workers the whole server's."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.refresh()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(_VersionCollector(lambda: self._versions()))
        return generate_latest(registry)

    def watch_versions(self, versions: Callable[[], list[Any]]) -> None:
        """Report ``versions()`` (``serve.repository.Version`` objects) in the per-version gauges at each scrape."""
        self._versions = versions

    def model_batch_observer(self, model: str, version: str) -> Callable[[int, int, float], None]:
        """``on_batch`` for one version's batcher: the server totals and that version's series."""
        seconds = self.model_batch_seconds.labels(model, version)
        crops = self.model_crops.labels(model, version)

        def observe(n: int, padded: int, took: float) -> None:
            self.observe_batch(n, padded, took)
            seconds.observe(took)
            crops.inc(n)

        return observe

    def set_backend(self, backend: Any) -> None:
        """Report the loaded backend (``kind``, ``provider``, ``precision``) as the one series of the info gauge."""
        if self.multiprocess:  # the workers' shared files keep every series: the old one reads 0
            for labels in list(self.backend_info._metrics):
                self.backend_info.labels(*labels).set(0)
        else:
            self.backend_info.clear()
        self.backend_info.labels(backend.kind, backend.provider, backend.precision).set(1)

    def observe_batch(self, n: int, padded: int, seconds: float) -> None:
        self.batch_size.observe(n)
        self.padded_batch_size.observe(padded)
        self.batch_seconds.observe(seconds)
        self.crops.inc(n)


def _backend_labels(backend: Any) -> tuple[str, str, str]:
    kind = getattr(backend, "kind", backend.name.split(":")[0])
    provider = getattr(backend, "provider", backend.name)
    return kind, provider, getattr(backend, "precision", backend.card.precision)


class _VersionCollector:
    """Gauges read at scrape time from the repository: state, backend info, queue, leases, memory estimate."""

    def __init__(self, versions: Callable[[], list[Any]]) -> None:
        self.versions = versions

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        by = ["model", "version"]
        state = GaugeMetricFamily(
            "resnet_serve_model_state", "1 on the version's state: READY, LOADING or UNAVAILABLE", labels=[*by, "state"]
        )
        info = GaugeMetricFamily(
            "resnet_serve_model_info",
            "What runs each loaded model version (1): backend, provider as its runtime names it, precision",
            labels=[*by, "backend", "provider", "precision"],
        )
        queue = GaugeMetricFamily("resnet_serve_model_queue_crops", "Crops waiting for a batch", labels=by)
        leases = GaugeMetricFamily("resnet_serve_model_in_flight_requests", "Requests running on it", labels=by)
        memory = GaugeMetricFamily(
            "resnet_serve_model_memory_estimate_bytes", "Memory estimate of a loaded version", labels=by
        )
        for v in self.versions():
            key = [v.model, v.label]
            state.add_metric([*key, v.state], 1)
            service = v.service
            if service is not None:
                info.add_metric([*key, *_backend_labels(service.backend)], 1)
                queue.add_metric(key, service.pending_crops)
                leases.add_metric(key, v.leases)
                memory.add_metric(key, v.estimate)
        yield from (state, info, queue, leases, memory)
