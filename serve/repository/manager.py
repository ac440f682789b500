"""The model repository: several models, several versions each, loaded, swapped and unloaded while traffic flows.

Layout (Triton's; ``export.triton`` writes it)::

    ROOT/<name>/config.pbtxt            optional: version_policy (latest N | specific | all), max_batch_size
    ROOT/<name>/<version>/<artifact>    version = a whole number; artifact = .onnx/.fp16.onnx/.int8.onnx/.plan/.pt
    ROOT/<name>/<artifact>.parity.json  optional: a parity report export.triton keeps beside the versions

Each loaded version owns one ``ClassifyService`` (backend + batcher + decode pool), exactly what one ``--model``
server runs. ``--model PATH`` is a one-model repository (the card's name, version 1) that never rescans.

A new version is opened, checked (card vs graph by one real inference, parity report), warmed up at every batch
shape and only then switched to: ``Model.serving`` is replaced whole, so a request sees the old set or the new one,
never a mix. Requests already admitted hold a lease on their version (``lease``); an old version is closed when its
leases are gone. A version that fails is ``UNAVAILABLE`` with its reason and is retried only when its files change;
whatever served before keeps serving.

A version folder is taken as complete when two looks ``SETTLE_S`` apart find the same file names, sizes and
modification times, and it then must load (its card parses); writers that rename a finished folder into place
(``export.triton`` does) are never seen half-written at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from resnet import UserError
from resnet.artifacts import artifact_kind, report_path
from resnet.runtime.runner import Runner

from ..engine.precision import gate_verdict, select_backend
from ..engine.service import ClassifyService, check_backend
from ..settings import Settings
from .pbtxt import ModelConfig, PbtxtError, read_model_config

log = logging.getLogger("serve.repository.manager")

READY, UNAVAILABLE, LOADING = "READY", "UNAVAILABLE", "LOADING"
CONFIG_FILE = "config.pbtxt"
SETTLE_S = 0.2  # two looks this far apart must agree before a version folder counts as complete
SESSION_OVERHEAD = 112 << 20  # per session beyond its weights (arena, graph, threads); a ResNet-50 measured ~110
MEMORY_RESERVE = 0.1  # of MemAvailable kept free when --max-model-memory-mb is 0
ARTIFACT_SUFFIXES = (".onnx", ".plan", ".engine", ".pt", ".pth", ".ckpt")
REDUCED = ("fp16", "int8")


class RepositoryError(Exception):
    """A request for a model or version the repository cannot answer: status (404 unknown/unloaded, 503 loading,
    400 refused load) and one line."""

    def __init__(self, status: int, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.retry = status, message, retry


@dataclass(eq=False)
class Version:
    """One version of one model, in any state. ``service`` is set while it is loaded (READY, or retiring)."""

    model: str
    number: int
    path: Path | None
    state: str = LOADING
    reason: str = ""
    service: ClassifyService | None = None
    fingerprint: tuple = ()
    failed: bool = False  # the last load failed: not retried until the fingerprint changes
    leases: int = 0
    estimate: int = 0  # bytes, see estimate_bytes

    @property
    def label(self) -> str:
        return str(self.number)


@dataclass(eq=False)
class Model:
    name: str
    path: Path | None  # None: --model's one-model repository
    config: ModelConfig = field(default_factory=ModelConfig)
    config_error: str = ""
    versions: dict[int, Version] = field(default_factory=dict)
    serving: dict[int, Version] = field(default_factory=dict)  # replaced whole: the atomic switch
    unloaded: bool = False  # unloaded by request: no poll reloads it, only a load request
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def latest(self) -> Version | None:
        serving = self.serving
        return serving[max(serving)] if serving else None


# ---- the folder ----------------------------------------------------------------------------------------------------


def scan(root: Path) -> dict[str, dict[int, Path]]:
    """``{model name: {version: folder}}`` of a repository folder; hidden entries (staging folders) are skipped."""
    found: dict[str, dict[int, Path]] = {}
    for mdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found[mdir.name] = {
            int(v.name): v for v in mdir.iterdir() if v.is_dir() and v.name.isdigit() and not v.name.startswith(".")
        }
    return found


def fingerprint(folder: Path) -> tuple:
    """(name, size, mtime) of every file under ``folder``: equal twice in a row = nobody is writing it."""
    rows = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            with contextlib.suppress(OSError):
                st = p.stat()
                rows.append((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return tuple(sorted(rows))


def artifacts_in(folder: Path) -> list[Path]:
    """The servable artifacts of a version folder (not reports, sidecars, rejected candidates or hidden files)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.endswith(ARTIFACT_SUFFIXES)
    )


def estimate_bytes(files: list[Path], sessions: int) -> int:
    """Memory a version takes once loaded: its weights (the artifact's bytes: parameters x bytes per precision,
    external data included) once per session, plus ``SESSION_OVERHEAD`` per session. Every artifact of the folder
    counts: ``--precision auto`` loads each to time it."""
    weights = 0
    for f in files:
        with contextlib.suppress(OSError):
            weights += f.stat().st_size
            weights += sum(x.stat().st_size for x in f.parent.iterdir() if x.name.startswith(f.name + ".data"))
    return weights * sessions + SESSION_OVERHEAD * sessions


def memory_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _gate(artifact: Path, model_dir: Path) -> str:
    """Why ``artifact`` may not be served by its parity report (empty = it may). A report beside it or (export.triton)
    beside the versions that says failed refuses it; a reduced-precision graph needs a passing one."""
    reports = [report_path(artifact), model_dir / report_path(artifact).name]
    found = next((r for r in reports if r.is_file()), None)
    kind = artifact_kind(artifact)
    if found is not None:
        return gate_verdict(found.with_name(found.name[: -len(".parity.json")]))
    if kind == "onnx":
        from resnet.onnx_card import read_onnx_card

        precision = read_onnx_card(artifact).precision  # CardError: the card does not parse (half-written, foreign)
        if precision in REDUCED:
            return f"a {precision} graph needs a passing parity report ({report_path(artifact).name}); none found"
    return ""


def open_version(folder: Path, model_dir: Path, settings: Settings) -> Runner:
    """Load and check the backend of one version folder (blocking): one artifact is served as ``--model FILE``, several
    as ``--model DIR --precision`` (serve.engine.precision). Raises ``UserError`` with the reason it cannot be served."""
    files = artifacts_in(folder)
    if not files:
        raise UserError(f"no artifact in {folder.name}/ (expected one of {', '.join(ARTIFACT_SUFFIXES)})")
    if len(files) == 1:
        why = _gate(files[0], model_dir)
        if why:
            raise UserError(f"{files[0].name}: {why}")
        target = files[0]
    else:
        target = folder
    backend = select_backend(dataclasses.replace(settings, model=str(target), model_repository=""))
    check_backend(backend)  # card vs graph by one real inference: CardError when they disagree
    return backend


def _one_line(e: BaseException) -> str:
    text = "; ".join(ln.strip() for ln in str(e).strip().splitlines() if ln.strip()) or type(e).__name__
    return (text if isinstance(e, UserError) else f"{type(e).__name__}: {text}")[:400]


# ---- the repository ------------------------------------------------------------------------------------------------


class ModelRepository:
    """The models the server serves and their versions' states; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        on_batch: Callable[[Version], Callable[[int, int, float], None]] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.root = Path(settings.model_repository) if settings.model_repository else None
        self.models: dict[str, Model] = {}
        self.draining = False
        self.started = False  # the first scan has been loaded
        self._on_batch = on_batch
        self._on_change = on_change or (lambda: None)
        self._retiring: set[asyncio.Task] = set()

    # -- what requests see --

    @property
    def default_name(self) -> str | None:
        if self.settings.default_model:
            return self.settings.default_model
        return min(self.models) if self.models else None

    def default_service(self) -> ClassifyService | None:
        name = self.default_name
        model = self.models.get(name) if name else None
        latest = model.latest() if model else None
        return latest.service if latest else None

    def resolve(self, name: str | None, version: str | None = None) -> Version:
        """The version a request goes to (no version: the model's highest one serving). ``RepositoryError`` 404 for
        an unknown model or a version not loaded, 503 (retry) while it loads."""
        if not name:
            name = self.default_name
            if name is None:
                raise RepositoryError(404, "the repository holds no model")
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise RepositoryError(404, f"unknown model '{name}'; this server serves: {known}")
        if version in (None, ""):
            latest = model.latest()
            if latest is not None:
                return latest
            if any(v.state == LOADING for v in model.versions.values()):
                raise RepositoryError(503, f"model '{name}' is loading; retry shortly", retry=True)
            why = "; ".join(f"version {v.number}: {v.state} ({v.reason})" for v in model.versions.values())
            raise RepositoryError(404, f"model '{name}' has no version loaded" + (f" ({why})" if why else ""))
        number = int(version) if str(version).isdigit() else None
        found = model.serving.get(number) if number is not None else None
        if found is not None:
            return found
        known = model.versions.get(number) if number is not None else None
        if known is not None and known.state == LOADING:
            raise RepositoryError(503, f"model '{name}' version {version} is loading; retry shortly", retry=True)
        state = f": {known.state} ({known.reason})" if known is not None else ""
        raise RepositoryError(404, f"model '{name}' has no version '{version}' loaded{state}")

    @contextlib.contextmanager
    def lease(self, version: Version) -> Iterator[ClassifyService]:
        """Hold ``version`` while a request runs on it: it is not closed before every lease is given back."""
        service = version.service
        assert service is not None
        version.leases += 1
        try:
            yield service
        finally:
            version.leases -= 1

    @property
    def pending_crops(self) -> int:
        return sum(v.service.pending_crops for m in self.models.values() for v in m.versions.values() if v.service)

    def loaded(self) -> list[Version]:
        return [v for m in self.models.values() for v in m.versions.values() if v.service is not None]

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every model and version with its state and reason."""
        rows = []
        for name in sorted(self.models):
            model = self.models[name]
            if model.config_error:
                rows.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": model.config_error})
            if not model.versions and not model.config_error:
                rows.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": "no version folder"})
            for number in sorted(model.versions):
                v = model.versions[number]
                if not ready_only or v.state == READY:
                    rows.append({"name": name, "version": v.label, "state": v.state, "reason": v.reason})
        return [r for r in rows if not ready_only or r["state"] == READY]

    # -- start, poll, close --

    def add_single(self, name: str, service: ClassifyService) -> Version:
        """``--model``: one model, version 1, already built (warmed up by the app's lifespan)."""
        model = Model(name, None)
        v = Version(name, 1, None, READY, "", service)
        model.versions[1] = v
        model.serving = {1: v}
        self.models[name] = model
        self.started = True
        self._on_change()
        return v

    async def start(self) -> None:
        """Load every model of the repository folder (the first scan)."""
        await self.sync()
        self.started = True
        self._on_change()

    async def poll_forever(self) -> None:
        while not self.draining:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.sync()
            except Exception:  # a scan must never stop the polling; the log says why
                log.exception("repository scan failed")

    async def sync(self, only: str | None = None, force: bool = False) -> None:
        """Rescan the folder and bring each model (or only ``only``) in line with it."""
        if self.root is None:
            return
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, scan, self.root)
        except OSError as e:
            log.error("cannot scan the model repository %s: %s", self.root, e)
            return
        for name, versions in found.items():
            if only is not None and name != only:
                continue
            model = self.models.setdefault(name, Model(name, self.root / name))
            if model.unloaded and not force:
                continue
            async with model.lock:
                await self._sync_model(model, versions)
        for name, model in list(self.models.items()):
            if name not in found and model.path is not None and (only is None or only == name):
                async with model.lock:
                    await self._sync_model(model, {})

    async def _sync_model(self, model: Model, on_disk: dict[int, Path]) -> None:
        assert model.path is not None
        try:
            model.config = read_model_config(model.path / CONFIG_FILE)
            model.config_error = ""
        except PbtxtError as e:
            model.config_error = (
                f"{CONFIG_FILE} not read ({e}); keeping the version policy {model.config.policy.describe()}"
            )
        for number, v in model.versions.items():
            if number not in on_disk and v.state != UNAVAILABLE:
                v.state, v.reason = UNAVAILABLE, "removed from the repository"
        prints = {n: fingerprint(p) for n, p in on_disk.items()}
        tried: set[int] = set()
        while True:
            candidates = [
                n
                for n in on_disk
                if not (n in model.versions and model.versions[n].failed and model.versions[n].fingerprint == prints[n])
            ]
            wanted = model.config.policy.select(candidates)
            todo = [n for n in wanted if n not in model.serving and n not in tried]
            if not todo:
                break
            number = todo[0]
            tried.add(number)
            await self._load(model, number, on_disk[number])
            prints[number] = model.versions[number].fingerprint
        self._switch(model, wanted, set(on_disk))

    async def _load(self, model: Model, number: int, folder: Path) -> None:
        """Load one version beside whatever serves (LOADING, then READY or UNAVAILABLE with the reason)."""
        v = model.versions.get(number)
        if v is None or v.service is not None:
            v = model.versions[number] = Version(model.name, number, folder)
        v.state, v.reason, v.failed = LOADING, "loading", False
        self._on_change()
        first = fingerprint(folder)
        await asyncio.sleep(SETTLE_S)
        v.fingerprint = fingerprint(folder)
        if first != v.fingerprint:
            v.state, v.reason = UNAVAILABLE, "files still changing; looked at again at the next scan or load request"
            v.fingerprint = ()  # not a failure: the next scan looks again
            return
        started = time.perf_counter()
        try:
            self._check_room(model, v, folder)
            settings = self._settings_for(model)
            backend = await asyncio.get_running_loop().run_in_executor(
                None, open_version, folder, model.path or folder, settings
            )
            service = ClassifyService(backend, settings, on_batch=self._on_batch(v) if self._on_batch else None)
            v.service = service
            await service.start()
        except Exception as e:  # the reason goes to the index; the serving version stays
            await self._close(v)
            v.state, v.reason, v.failed = UNAVAILABLE, f"failed to load: {_one_line(e)}", True
            log.warning("model %s version %d not loaded: %s", model.name, number, v.reason)
            self._on_change()
            return
        v.state, v.reason = READY, ""
        log.info(
            "model %s version %d loaded and warmed up in %.2f s (%s, estimate %d MiB)",
            model.name,
            number,
            time.perf_counter() - started,
            v.service.backend_name,
            v.estimate >> 20,
        )
        self._on_change()

    def _settings_for(self, model: Model) -> Settings:
        s = dataclasses.replace(self.settings, model_repository="")
        cap = model.config.max_batch_size
        if cap and (not s.max_batch or s.max_batch > cap):
            s = dataclasses.replace(s, max_batch=cap)
        return s

    def _check_room(self, model: Model, v: Version, folder: Path) -> None:
        """Refuse a load that would exceed ``--max-loaded-models`` or the memory bound (UserError with the numbers)."""
        s = self.settings
        files = artifacts_in(folder)
        onnx = any(artifact_kind(f) == "onnx" for f in files)
        v.estimate = estimate_bytes(files, 2 if onnx and s.multiscale != "off" else 1)
        loaded = [x for x in self.loaded() if x is not v]
        replaced = 1 if model.config.policy.kind == "latest" and len(model.serving) >= model.config.policy.num else 0
        if s.max_loaded_models and len(loaded) - replaced + 1 > s.max_loaded_models:
            raise UserError(
                f"refused: {len(loaded)} model versions are loaded and --max-loaded-models is {s.max_loaded_models}"
            )
        mib = 1 << 20
        if s.max_model_memory_mb:
            used = sum(x.estimate for x in loaded)
            if used + v.estimate > s.max_model_memory_mb * mib:
                raise UserError(
                    f"refused: needs about {v.estimate / mib:.0f} MiB (weights x sessions + overhead), "
                    f"{used / mib:.0f} MiB of --max-model-memory-mb {s.max_model_memory_mb} are taken"
                )
        else:
            free = memory_available()
            if free is not None and v.estimate > free * (1 - MEMORY_RESERVE):
                raise UserError(
                    f"refused: needs about {v.estimate / mib:.0f} MiB (weights x sessions + overhead), the machine "
                    f"has {free / mib:.0f} MiB available"
                )

    def _switch(self, model: Model, wanted: list[int], on_disk: set[int]) -> None:
        """Serve the READY versions of ``wanted`` (atomically); retire the rest once their requests are done. When
        none of ``wanted`` is READY, what served and is still on disk keeps serving."""
        new = {n: model.versions[n] for n in wanted if model.versions[n].state == READY}
        if not new:
            new = {n: v for n, v in model.serving.items() if n in on_disk}
        old = model.serving
        if new.keys() == old.keys():
            return
        model.serving = new  # the switch: one assignment
        if new:
            log.info("model %s serves version(s) %s", model.name, sorted(new))
        for n, v in old.items():
            if n not in new:
                self._retire(v, f"unloaded: the version policy ({model.config.policy.describe()}) serves {sorted(new)}")
        self._on_change()

    def _retire(self, v: Version, reason: str) -> None:
        if v.state != UNAVAILABLE or not v.reason:
            v.state, v.reason = UNAVAILABLE, reason
        task = asyncio.ensure_future(self._drain_and_close(v))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain_and_close(self, v: Version) -> None:
        """Wait until no admitted request runs on ``v`` (bounded by the request deadline), then close it."""
        deadline = time.monotonic() + self.settings.request_timeout_s + 1.0
        while v.leases and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self._close(v)
        log.info("model %s version %d unloaded (%s)", v.model, v.number, v.reason)
        self._on_change()

    async def _close(self, v: Version) -> None:
        service, v.service = v.service, None
        if service is not None:
            service.draining = True
            with contextlib.suppress(Exception):
                await service.close()

    # -- the repository extension: load / unload --

    async def load(self, name: str) -> None:
        """Load (or reload) a model by request. ``RepositoryError`` 404 when the folder has no such model, 400 with
        the reason when no version of it could be loaded."""
        if self.root is None:
            model = self.models.get(name)
            if model is None:
                raise RepositoryError(404, f"unknown model '{name}'; this server serves: {', '.join(self.models)}")
            async with model.lock:
                await self._reload_single(model)
        else:
            if not (self.root / name).is_dir() or name.startswith("."):
                raise RepositoryError(404, f"no model '{name}' in the repository {self.root}")
            model = self.models.setdefault(name, Model(name, self.root / name))
            model.unloaded = False
            for v in model.versions.values():
                v.failed = False  # a load request retries failed versions too
            await self.sync(only=name, force=True)
        if not model.serving:
            reasons = "; ".join(f"version {v.number}: {v.reason}" for v in model.versions.values()) or "no version"
            raise RepositoryError(400, f"failed to load '{name}': {reasons}")

    async def _reload_single(self, model: Model) -> None:
        if model.serving:
            return
        v = model.versions.get(1) or Version(model.name, 1, None)
        model.versions[1] = v
        v.state, v.reason, v.failed = LOADING, "loading", False
        settings = dataclasses.replace(self.settings)
        try:
            backend = await asyncio.get_running_loop().run_in_executor(None, select_backend, settings)
            await asyncio.get_running_loop().run_in_executor(None, check_backend, backend)
            v.service = ClassifyService(backend, settings, on_batch=self._on_batch(v) if self._on_batch else None)
            await v.service.start()
        except Exception as e:
            await self._close(v)
            v.state, v.reason, v.failed = UNAVAILABLE, f"failed to load: {_one_line(e)}", True
            return
        v.state, v.reason = READY, ""
        model.serving = {1: v}
        self._on_change()

    async def unload(self, name: str) -> None:
        """Unload every version of a model; requests admitted before finish first. 404 for an unknown model."""
        model = self.models.get(name)
        if model is None:
            raise RepositoryError(404, f"unknown model '{name}'")
        async with model.lock:
            model.unloaded = True
            old, model.serving = model.serving, {}
            for v in old.values():
                self._retire(v, "unloaded by request")
            for v in model.versions.values():
                if v.service is None and v.state != UNAVAILABLE:
                    v.state, v.reason = UNAVAILABLE, "unloaded by request"
        self._on_change()

    async def close(self) -> None:
        """Shutdown: every version stops taking work and is closed."""
        self.draining = True
        for task in list(self._retiring):
            task.cancel()
        for model in self.models.values():
            model.serving = {}
            for v in model.versions.values():
                await self._close(v)
