"""Which model version a request goes to, and whether the server takes it: the admission dependencies of /classify
(``?model=NAME&version=V``) and of KServe v2 (``/v2/models/NAME[/versions/V]``) over the state's ``ModelRepository``.

Admission resolves the version and takes a lease on it in one step (no ``await`` between), so a version switched
away from while the request runs is closed only after the request is done. The request counts in flight for the
SIGTERM drain as everywhere (``ServeState.in_flight``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from fastapi import Query, Request

from ..engine.service import ClassifyService
from ..repository.manager import READY, RepositoryError, Version
from .http import ApiError
from .state import state_of
from .v2_schema import V2Error


@dataclass
class Routed:
    """The admitted request's model version and its service."""

    name: str
    version: str
    service: ClassifyService


def server_unavailable(request: Request) -> str | None:
    """Why the server as a whole takes no work now (None when it does): failed, draining or warming up."""
    state = state_of(request)
    repo, service = state.repository, state.service
    if state.failed or (service is not None and service.failed):  # as /healthz: the default model's backend failed
        return "failed"
    if repo.draining or (service is not None and service.draining):
        return "draining"
    if not repo.started:
        return "warming up"
    ready = [v for v in repo.loaded() if v.state == READY and v.service is not None and v.service.ready]
    return None if ready else "warming up"


def _resolve(request: Request, name: str | None, version: str | None) -> Version:
    v = state_of(request).repository.resolve(name, version)
    service = v.service
    if service is None or not service.ready:
        raise RepositoryError(503, f"model '{v.model}' version {v.label} is warming up; retry shortly", retry=True)
    if service.failed:
        raise RepositoryError(503, f"model '{v.model}' version {v.label} has failed ({service.failed})")
    return v


@contextlib.contextmanager
def _admitted(request: Request, v: Version) -> Iterator[Routed]:
    state = state_of(request)
    metrics = state.metrics
    state.in_flight += 1
    metrics.in_flight.inc()
    outcome = "error"
    try:
        with v.lease() as service:
            yield Routed(v.model, v.label, service)
            outcome = "ok"
    finally:
        state.in_flight -= 1
        metrics.in_flight.dec()
        metrics.model_requests.labels(v.model, v.label, outcome).inc()


async def admit_model(
    request: Request,
    model: str | None = Query(None, description="the model to run (no model: the server's default model)"),
    version: str | None = Query(None, description="the model's version (no version: its highest one loaded)"),
) -> AsyncIterator[Routed]:
    """/classify's dependency: 503 + Retry-After unless the server takes work, 404 for a model or version not
    loaded (the server's error body); the request then runs on that version."""
    why = server_unavailable(request)
    if why is not None:
        state = state_of(request)
        state.metrics.rejected.labels(why.replace(" ", "_")).inc()
        if why == "failed":
            reason = state.failed or (state.service.failed if state.service else "")
            raise ApiError(503, "unavailable", f"server has failed ({reason}); it needs a restart")
        raise ApiError(503, "unavailable", f"server is {why}; retry shortly", {"Retry-After": "1"})
    try:
        v = _resolve(request, model, version)
    except RepositoryError as e:
        if e.status == 400:  # a version that is not a number: a bad query parameter, as topk's
            raise ApiError(422, "invalid_parameter", e.message) from None
        code = "model_not_found" if e.status == 404 else "unavailable"
        raise ApiError(e.status, code, e.message, {"Retry-After": "1"} if e.retry else None) from None
    with _admitted(request, v) as routed:
        yield routed


def v2_version(request: Request, name: str, version: str | None) -> Version:
    """The version a /v2/models route names; ``V2Error`` 404/503 in the protocol's error shape."""
    why = server_unavailable(request)
    if why is not None:
        state_of(request).metrics.rejected.labels(why.replace(" ", "_")).inc()
        headers = {} if why == "failed" else {"Retry-After": "1"}
        raise V2Error(503, f"server is {'not ready (warming up)' if why == 'warming up' else why}", headers)
    try:
        return _resolve(request, name, version)
    except RepositoryError as e:
        raise V2Error(e.status, e.message, {"Retry-After": "1"} if e.retry else None) from None


async def admit_v2(request: Request, name: str, version: str | None = None) -> AsyncIterator[Routed]:
    """KServe v2 infer's dependency: as ``admit_model`` with the model and version from the path."""
    v = v2_version(request, name, version)
    with _admitted(request, v) as routed:
        yield routed
