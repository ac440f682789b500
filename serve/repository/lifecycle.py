"""One model version's life, the one way every version lives (``--model`` and the repository alike)::

    LOADING --admit by report (a parity report beside the artifact must not say failed)--> open (off the event loop:
            select_backend + one real inference, card vs graph) --> warm (ClassifyService.start) --> READY (serving:
            requests hold leases)
    READY --retire (policy switch, unload request)--> UNAVAILABLE, drained (leases given back) --> closed
    LOADING --any failure--> UNAVAILABLE with the reason (``failed``: not retried until its files change)
    any --shutdown--> closed

``Version.open`` and ``Version.retire`` are the only places a version's service is made or closed; the repository
(``serve.repository.manager``) decides *when* (scans, load/unload requests, the version policy, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from resnet import UserError
from resnet.runtime.runner import Runner

from ..engine.precision import select_backend
from ..engine.service import ClassifyService, check_backend
from ..settings import Settings
from .folder import memory_available, version_target
from .pbtxt import ModelConfig

log = logging.getLogger("serve.repository.lifecycle")

READY, UNAVAILABLE, LOADING = "READY", "UNAVAILABLE", "LOADING"
BatchObserver = Callable[[int, int, float], None]
MEMORY_RESERVE = 0.1  # of MemAvailable kept free when --max-model-memory-mb is 0


class RepositoryError(Exception):
    """A request the repository cannot answer: status (400 bad name/version or refused load, 404 unknown/unloaded,
    503 loading) and one line."""

    def __init__(self, status: int, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.retry = status, message, retry


def open_source(settings: Settings, source: str) -> Runner:
    """Open and check one artifact, or a folder of them with ``--precision`` (blocking): the one opener of every
    version. Raises ``UserError`` (``CardError`` included) with the reason it cannot be served."""
    backend = select_backend(dataclasses.replace(settings, model=source, model_repository=""))
    took = check_backend(backend)  # card vs graph by one real inference: CardError when they disagree
    log.info("start-up inference of %s at the card's input size %d took %.3f s", source, backend.card.input_size, took)
    return backend


def open_folder(settings: Settings, folder: Path, model_dir: Path) -> Runner:
    """``open_source`` of a repository version folder: its artifact, gated by its parity report."""
    return open_source(settings, str(version_target(folder, model_dir)))


def one_line(e: BaseException) -> str:
    """An exception as the one line an index row or log line shows."""
    text = "; ".join(ln.strip() for ln in str(e).strip().splitlines() if ln.strip()) or type(e).__name__
    return (text if isinstance(e, UserError) else f"{type(e).__name__}: {text}")[:400]


@dataclass(eq=False)
class Version:
    """One version of one model, in any state. ``service`` is set while it is loaded (READY, or retiring);
    ``opener`` opens its backend (blocking; run off the event loop)."""

    model: str
    number: int
    opener: Callable[[Settings], Runner]
    folder: Path | None = None  # None: --model's one version
    state: str = LOADING
    reason: str = ""
    service: ClassifyService | None = None
    fingerprint: tuple = ()
    failed: bool = False  # the last load failed: not retried until the fingerprint changes
    leases: int = 0
    estimate: int = 0  # bytes, see folder.estimate_bytes

    @property
    def label(self) -> str:
        return str(self.number)

    async def open(
        self, settings: Settings, on_batch: BatchObserver | None = None, backend: Runner | None = None
    ) -> bool:
        """LOADING -> READY (opened, checked, warmed up) or UNAVAILABLE with the reason; True when READY. ``backend``:
        already opened and checked (``--model``, before the port opened)."""
        self.state, self.reason, self.failed = LOADING, "loading", False
        started = time.perf_counter()
        try:
            if backend is None:
                backend = await asyncio.get_running_loop().run_in_executor(None, self.opener, settings)
            self.service = ClassifyService(backend, settings, on_batch=on_batch)
            await self.service.start()  # warm-up: ready at the smallest shape, the rest in the background
        except Exception as e:  # the reason goes to the index and the log; whatever served keeps serving
            await self.close()
            self.state, self.reason, self.failed = UNAVAILABLE, f"failed to load: {one_line(e)}", True
            log.warning("model %s version %d not loaded: %s", self.model, self.number, self.reason)
            return False
        self.state, self.reason = READY, ""
        log.info(
            "model %s version %d loaded and warmed up in %.2f s (%s, estimate %d MiB)",
            self.model,
            self.number,
            time.perf_counter() - started,
            self.service.backend_name,
            self.estimate >> 20,
        )
        return True

    @contextlib.contextmanager
    def lease(self) -> Iterator[ClassifyService]:
        """Hold this version while a request runs on it: it is not closed before every lease is given back."""
        service = self.service
        assert service is not None
        self.leases += 1
        try:
            yield service
        finally:
            self.leases -= 1

    async def retire(self, reason: str, drain_s: float) -> None:
        """READY -> UNAVAILABLE (``reason``): wait until no admitted request runs on it (at most ``drain_s``), then
        close it."""
        if self.state != UNAVAILABLE or not self.reason:
            self.state, self.reason = UNAVAILABLE, reason
        deadline = time.monotonic() + drain_s
        while self.leases and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self.close()
        log.info("model %s version %d unloaded (%s)", self.model, self.number, self.reason)

    async def close(self) -> None:
        """Stop taking work and release the backend (no wait for leases: ``retire`` waits)."""
        service, self.service = self.service, None
        if service is not None:
            service.draining = True
            with contextlib.suppress(Exception):
                await service.close()


@dataclass(eq=False)
class Model:
    """A model's versions, which of them serve, and its folder's config and problems."""

    name: str
    path: Path | None  # None: --model's one-model repository
    config: ModelConfig = field(default_factory=ModelConfig)
    config_error: str = ""
    problems: list[str] = field(default_factory=list)  # of the folder as a whole (see folder.ModelLook)
    versions: dict[int, Version] = field(default_factory=dict)
    serving: dict[int, Version] = field(default_factory=dict)  # replaced whole: the atomic switch
    unloaded: bool = False  # unloaded by request: no poll reloads it, only a load request
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def latest(self) -> Version | None:
        serving = self.serving
        return serving[max(serving)] if serving else None


def check_room(s: Settings, estimate: int, loaded: list[int], replaced: int) -> None:
    """Refuse (``UserError`` with the numbers) a load of ``estimate`` bytes beside the ``loaded`` versions' estimates
    that would exceed ``--max-loaded-models`` or the memory bound; ``replaced`` of them go when it is switched to."""
    if s.max_loaded_models and len(loaded) - replaced + 1 > s.max_loaded_models:
        raise UserError(
            f"refused: {len(loaded)} model versions are loaded and --max-loaded-models is {s.max_loaded_models}"
        )
    mib = 1 << 20
    if s.max_model_memory_mb:
        if sum(loaded) + estimate > s.max_model_memory_mb * mib:
            raise UserError(
                f"refused: needs about {estimate / mib:.0f} MiB (weights x sessions + overhead), "
                f"{sum(loaded) / mib:.0f} MiB of --max-model-memory-mb {s.max_model_memory_mb} are taken"
            )
        return
    free = memory_available()
    if free is not None and estimate > free * (1 - MEMORY_RESERVE):
        raise UserError(
            f"refused: needs about {estimate / mib:.0f} MiB (weights x sessions + overhead), the machine "
            f"has {free / mib:.0f} MiB available"
        )
