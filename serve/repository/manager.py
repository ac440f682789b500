"""The model repository: several models, several versions each, loaded, swapped and unloaded while traffic flows.

Layout (Triton's; ``export.triton`` writes it)::

    ROOT/<name>/config.pbtxt            optional: version_policy (latest N | specific | all), max_batch_size
    ROOT/<name>/<version>/<artifact>    version = ASCII decimal; artifact = .onnx/.fp16.onnx/.int8.onnx/.plan/.pt
    ROOT/<name>/<artifact>.parity.json  optional: a parity report export.triton keeps beside the versions

Every version lives the one life of ``serve.repository.lifecycle.Version`` (open, warm, serve, drain, close);
``--model PATH`` is a one-model repository (the card's name, version 1) with no folder to look at. This module
decides *when*: the first look, polls (``--model-control-mode poll``), load/unload requests (refused under
``none``) and the version policy.

A new version is opened, checked, warmed up and only then switched to: ``Model.serving`` is replaced whole, so a
request sees the old set or the new one, never a mix. An old version is closed when its leases are gone. A version
that fails is ``UNAVAILABLE`` with its reason and is retried only when its files change; whatever served before keeps
serving. One bad entry (``serve.repository.folder``) is one UNAVAILABLE row; the other models go on.

A version folder is taken as complete when two looks ``SETTLE_S`` apart find the same file names, sizes and
modification times; writers that rename a finished folder into place (``export.triton`` does) are never seen
half-written at all. Every look at the folder runs off the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path

from resnet import UserError
from resnet.artifacts import artifact_kind
from resnet.runtime.runner import Runner

from ..engine.service import ClassifyService
from ..settings import ModelControl, Settings
from .folder import ModelLook, Refused, artifacts_in, estimate_bytes, fingerprint, look, name_problem, parse_version
from .lifecycle import (
    LOADING,
    READY,
    UNAVAILABLE,
    BatchObserver,
    Model,
    RepositoryError,
    Version,
    check_room,
    open_folder,
    open_source,
)

__all__ = ["LOADING", "READY", "UNAVAILABLE", "Model", "ModelRepository", "RepositoryError", "Version"]
log = logging.getLogger("serve.repository.manager")

SETTLE_S = 0.2  # two looks this far apart must agree before a version folder counts as complete
SESSION_OVERHEAD = 112 << 20  # per session beyond its weights (arena, graph, threads); a ResNet-50 measured ~110


class ModelRepository:
    """The models the server serves and their versions' states; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        on_batch: Callable[[Version], BatchObserver] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.root = Path(settings.model_repository) if settings.model_repository else None  # None: --model
        self.control = ModelControl(settings.model_control_mode)
        self.models: dict[str, Model] = {}
        self.draining = False
        self.started = False  # the first look has been loaded
        self.failed: str | None = None  # --model: its one version did not open or warm up (a restart is needed)
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
        """The version a request goes to (no version: the model's highest one serving). ``RepositoryError`` 400 for a
        version that is not plain decimal, 404 for an unknown model or a version not loaded, 503 while it loads."""
        if not name:
            name = self.default_name
            if name is None:
                raise RepositoryError(404, "the repository holds no model")
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise RepositoryError(404, f"unknown model '{name[:80]}'; this server serves: {known}")
        if version in (None, ""):
            latest = model.latest()
            if latest is not None:
                return latest
            if any(v.state == LOADING for v in model.versions.values()):
                raise RepositoryError(503, f"model '{name}' is loading; retry shortly", retry=True)
            why = "; ".join(f"version {v.number}: {v.state} ({v.reason})" for v in model.versions.values())
            raise RepositoryError(404, f"model '{name}' has no version loaded" + (f" ({why})" if why else ""))
        number = parse_version(version)
        if number is None:
            raise RepositoryError(400, f"version must be a plain decimal number, not '{version[:40]}'")
        found = model.serving.get(number)
        if found is not None:
            return found
        known = model.versions.get(number)
        if known is not None and known.state == LOADING:
            raise RepositoryError(503, f"model '{name}' version {version} is loading; retry shortly", retry=True)
        state = f": {known.state} ({known.reason})" if known is not None else ""
        raise RepositoryError(404, f"model '{name}' has no version '{version}' loaded{state}")

    @property
    def pending_crops(self) -> int:
        return sum(v.service.pending_crops for v in self.loaded() if v.service is not None)

    def loaded(self) -> list[Version]:
        return [v for m in self.models.values() for v in m.versions.values() if v.service is not None]

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every model and version with its state and reason."""
        rows = []
        for name in sorted(self.models):
            model = self.models[name]
            for why in ([model.config_error] if model.config_error else []) + model.problems:
                rows.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": why})
            if not model.versions and not model.config_error and not model.problems:
                rows.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": "no version folder"})
            for number in sorted(model.versions):
                v = model.versions[number]
                rows.append({"name": name, "version": v.label, "state": v.state, "reason": v.reason})
        return [r for r in rows if not ready_only or r["state"] == READY]

    # -- start, poll, close --

    async def start(self, backend: Runner | None = None) -> None:
        """The first load: ``--model``'s one version (``backend``: already opened and checked), or every model of
        the repository folder."""
        if self.root is None:
            await self._start_one(backend)
        else:
            await self.sync()
        self.started = True
        self._on_change()

    async def _start_one(self, backend: Runner | None) -> None:
        if backend is None:
            try:
                backend = await asyncio.get_running_loop().run_in_executor(
                    None, open_source, self.settings, self.settings.model
                )
            except Exception as e:  # /healthz and /readyz say why (503)
                self.failed = f"load failed: {type(e).__name__}: {e}"
                log.error("%s", self.failed)
                return
        name = backend.card.name
        v = Version(name, 1, lambda s: open_source(s, s.model))
        model = self.models[name] = Model(name, None, versions={1: v})
        if await v.open(self.settings, self._observer(v), backend):
            model.serving = {1: v}
        else:
            self.failed = f"warm-up {v.reason}"

    async def follow(self) -> None:
        """``--model-control-mode poll``: look at the folder every ``--repository-poll-secs`` until the drain (returns
        at once in the other modes and for ``--model``)."""
        if self.root is None or self.control != ModelControl.POLL:
            return
        while not self.draining:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.sync()
            except Exception:  # a look must never stop the polling; the log says why
                log.exception("repository scan failed")

    async def sync(self, only: str | None = None, force: bool = False) -> None:
        """Look at the folder (off the event loop) and bring each model (or only ``only``) in line with it."""
        if self.root is None:
            return
        s = self.settings
        found = await asyncio.get_running_loop().run_in_executor(
            None, look, self.root, only, s.follow_outside_symlinks, s.max_config_bytes
        )
        if isinstance(found, str):
            log.error("%s", found)
            return
        gone = [n for n, m in self.models.items() if n not in found and m.path is not None and only in (None, n)]
        for name in [*found, *gone]:
            model = self.models.setdefault(name, Model(name, self.root / name))
            if model.unloaded and not force:
                continue
            async with model.lock:
                try:
                    await self._sync_model(model, found.get(name) or ModelLook(name, self.root / name))
                except Exception as e:  # one model's trouble is its own row; the others go on
                    log.exception("model %s: look failed", name)
                    model.problems = [f"not looked at: {type(e).__name__}: {e}"[:400]]
                    self._on_change()

    async def _sync_model(self, model: Model, found: ModelLook) -> None:
        model.problems = found.problems
        if found.config is not None:
            model.config, model.config_error = found.config, ""
        elif found.config_error:
            keep = f"keeping the version policy {model.config.policy.describe()}" if model.serving else "not loaded"
            model.config_error = f"{found.config_error}; {keep}"
        for number, v in model.versions.items():
            if number not in found.versions and v.state != UNAVAILABLE:
                v.state, v.reason = UNAVAILABLE, "removed from the repository"
        for number, why in found.refused.items():
            v = model.versions.get(number)
            if v is None or v.service is None:
                v = model.versions[number] = self._version(model, number, found.versions[number])
                v.state, v.reason = UNAVAILABLE, why
        if (found.problems and not found.versions) or (found.config_error and not model.serving):
            self._on_change()
            return  # the model as a whole is refused: nothing new loads until the folder is fixed
        usable = {n: p for n, p in found.versions.items() if n not in found.refused}
        tried: set[int] = set()
        while True:
            candidates = [
                n
                for n in usable
                if not (
                    n in model.versions
                    and model.versions[n].failed
                    and model.versions[n].fingerprint == found.prints[n]
                )
            ]
            wanted = model.config.policy.select(candidates)
            todo = [n for n in wanted if n not in model.serving and n not in tried]
            if not todo:
                break
            tried.add(todo[0])
            await self._load(model, todo[0], usable[todo[0]])
        self._switch(model, wanted, set(usable))

    def _version(self, model: Model, number: int, folder: Path) -> Version:
        assert model.path is not None
        opener = functools.partial(open_folder, folder=folder, model_dir=model.path)
        return Version(model.name, number, opener, folder)

    def _observer(self, v: Version) -> BatchObserver | None:
        return self._on_batch(v) if self._on_batch else None

    async def _load(self, model: Model, number: int, folder: Path) -> None:
        """Load one version beside whatever serves (LOADING, then READY or UNAVAILABLE with the reason)."""
        v = model.versions.get(number)
        if v is None or v.service is not None:
            v = model.versions[number] = self._version(model, number, folder)
        v.state, v.reason, v.failed = LOADING, "loading", False
        self._on_change()
        loop = asyncio.get_running_loop()
        s = self.settings
        try:
            first = await loop.run_in_executor(None, fingerprint, folder, self.root, s.follow_outside_symlinks)
            await asyncio.sleep(SETTLE_S)
            v.fingerprint = await loop.run_in_executor(None, fingerprint, folder, self.root, s.follow_outside_symlinks)
        except (Refused, OSError) as e:
            v.state, v.reason, v.fingerprint = UNAVAILABLE, str(e), ()
            self._on_change()
            return
        if first != v.fingerprint:
            v.state, v.reason = UNAVAILABLE, "files still changing; looked at again at the next scan or load request"
            v.fingerprint = ()  # not a failure: the next scan looks again
            return
        try:
            self._check_room(model, v, folder)
        except UserError as e:
            v.state, v.reason, v.failed = UNAVAILABLE, f"failed to load: {e}", True
            self._on_change()
            return
        await v.open(self._settings_for(model), self._observer(v))
        self._on_change()

    def _settings_for(self, model: Model) -> Settings:
        s = dataclasses.replace(self.settings, model_repository="")
        cap = model.config.max_batch_size
        if cap and (not s.max_batch or s.max_batch > cap):
            s = dataclasses.replace(s, max_batch=cap)
        return s

    def _check_room(self, model: Model, v: Version, folder: Path) -> None:
        """Refuse a load that would exceed ``--max-loaded-models`` or the memory bound (UserError with the numbers)."""
        files = artifacts_in(folder)
        onnx = any(artifact_kind(f) == "onnx" for f in files)
        v.estimate = estimate_bytes(files, 2 if onnx and self.settings.multiscale != "off" else 1, SESSION_OVERHEAD)
        policy = model.config.policy
        replaced = 1 if policy.kind == "latest" and len(model.serving) >= policy.num else 0
        check_room(self.settings, v.estimate, [x.estimate for x in self.loaded() if x is not v], replaced)

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

        async def retire() -> None:
            await v.retire(reason, self.settings.request_timeout_s + 1.0)
            self._on_change()

        task = asyncio.ensure_future(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- the repository extension: load / unload --

    def _controlled(self, action: str, name: str) -> Model | None:
        """The model a load/unload request names (None: not loaded yet); ``RepositoryError`` 400 when the model
        control mode refuses requests or the name cannot be a model's."""
        if self.control == ModelControl.NONE:
            raise RepositoryError(
                400,
                f"{action} refused: the model control mode is none (the server serves what it started with); "
                "start it with --model-control-mode explicit or poll to load and unload models",
            )
        problem = name_problem(name)
        if problem:
            raise RepositoryError(400, problem)
        return self.models.get(name)

    async def load(self, name: str) -> None:
        """Load (or reload) a model by request. ``RepositoryError`` 400 when refused or no version could be loaded,
        404 when there is no such model."""
        model = self._controlled("load", name)
        if self.root is None:
            if model is None:
                raise RepositoryError(404, f"unknown model '{name}'; this server serves: {', '.join(self.models)}")
            async with model.lock:
                model.unloaded = False
                v = model.versions[1]
                if v.service is not None and not model.serving:  # still retiring: the new life is a new Version
                    v = model.versions[1] = Version(v.model, 1, v.opener)
                if not model.serving and await v.open(self.settings, self._observer(v)):
                    model.serving = {1: v}
                self._on_change()
        else:
            if not (self.root / name).is_dir():
                raise RepositoryError(404, f"no model '{name}' in the repository {self.root}")
            model = self.models.setdefault(name, Model(name, self.root / name))
            model.unloaded = False
            for v in model.versions.values():
                v.failed = False  # a load request retries failed versions too
            await self.sync(only=name, force=True)
        if not model.serving:
            reasons = [f"version {v.number}: {v.reason}" for v in model.versions.values()]
            reasons += [model.config_error] if model.config_error else []
            raise RepositoryError(400, f"failed to load '{name}': {'; '.join(reasons + model.problems) or 'nothing'}")

    async def unload(self, name: str) -> None:
        """Unload every version of a model; requests admitted before finish first. 404 for an unknown model."""
        model = self._controlled("unload", name)
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
                await v.close()
