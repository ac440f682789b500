"""KServe v2 / Open Inference Protocol (REST) on our server, so Triton's and KServe's clients work against it.

Routes (``routers``, included by ``serve.app.create_app``):

- ``GET /v2/health/live`` · ``GET /v2/health/ready`` (503 until warmed up / draining): open, like /healthz
- ``GET /v2`` server metadata · ``GET /v2/models/{name}`` model metadata · ``.../ready`` · ``.../config``: behind
  the API key when one is set, like /classify
- ``POST /v2/repository/index``, ``POST /v2/repository/models/{name}/load|unload``: the model repository extension
  (``serve.repository.manager``), behind the API key
- every model route also under ``/v2/models/{name}/versions/{version}``; without a version: the model's highest
  version loaded (``serve.api.routing``)
- ``POST /v2/models/{name}/infer`` with exactly one input:
    * ``input``  FP32  ``[N, 3, S, S]`` crops already pre-processed (``resnet.preprocess``) -> ``logits`` FP32 [N, C]
    * ``image``  BYTES ``[B]`` encoded images (JPEG, PNG, ...; base64 strings in JSON form) -> ``probabilities``
      FP32 [B, C], the ten-crop (request parameter ``crops``: ``ten`` default, ``center``, or ``multiscale``: the
      paper's multi-scale test, as ``/classify?crops=multiscale``) mean softmax.

Both tensor encodings of the protocol are accepted and produced: JSON ``data`` and the binary tensor extension
(``Inference-Header-Content-Length``; tritonclient's default). The classification extension works too: ask for an
output with ``parameters.classification = k`` (tritonclient ``class_count=k``) and get BYTES ``"value:index:label"``.

The request is validated by the pydantic models of ``serve.api.v2_schema`` in a worker thread (a large JSON body never
holds the event loop). Crops go through the same version's ``ClassifyService`` as ``/classify`` (the shared batching queue)
and the same admission (``serve.api.routing.admit_v2``). Errors use the protocol's shape ``{"error": "message"}``
(statuses of docs/DESIGN.md §4: 400 bad tensor, 404 unknown model, 413/415 image limits, 503 + Retry-After, 504
deadline); the shared API-key check answers 401 with the server's usual error body.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from resnet.preprocess import topk_indices

from ..engine.service import ClassifyService
from ..repository.manager import RepositoryError, Version
from .http import read_body, require_api_key, within
from .routing import Routed, admit_v2, server_unavailable, v2_version
from .state import state_of
from .v2_schema import (
    HEADER_LENGTH,
    IMAGE_INPUT,
    LOGITS,
    PROBABILITIES,
    TENSOR_INPUT,
    InferRequest,
    ModelMetadata,
    OutputIn,
    Parsed,
    ServerMetadata,
    TensorMeta,
    V2Error,
    V2ErrorBody,
    infer_body_schema,
    parse_infer,
    serialize_bytes,
)

SERVER_NAME, SERVER_VERSION = "resnet-stack", "0.1.0"
MODEL_VERSION = "1"
V2_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": V2ErrorBody, "description": d}
    for s, d in {
        400: "bad request",
        401: "missing or wrong API key",
        404: "unknown model or version",
        413: "too many crops or images, or an image too large",
        415: "not an accepted image format or encoding",
        503: "not ready, draining, busy or failed",
        504: "deadline passed",
    }.items()
}


def _model(request: Request, name: str, version: str | None) -> tuple[Version, ClassifyService]:
    """The loaded version a /v2/models route names (404/503 in the protocol's error shape) and its service."""
    v = v2_version(request, name, version)
    assert v.service is not None
    return v, v.service


def _not_ready(request: Request) -> V2Error | None:
    why = server_unavailable(request)
    if why is None:
        return None
    headers = {} if why == "failed" else {"Retry-After": "1"}
    return V2Error(503, f"server is {'not ready (warming up)' if why == 'warming up' else why}", headers)


def backend_kind(backend_name: str) -> str:
    """``"onnxruntime:CPUExecutionProvider"`` -> ``"onnxruntime"``."""
    m = re.match(r"[A-Za-z0-9_.-]+", backend_name.strip())
    return m.group(0) if m else "unknown"


def _versions(request: Request, name: str) -> list[str]:
    model = state_of(request).repository.models.get(name)
    return [str(n) for n in sorted(model.serving)] if model is not None else []


def model_metadata(
    service: ClassifyService, name: str | None = None, versions: list[str] | None = None
) -> ModelMetadata:
    """The protocol's model metadata of a loaded version (``name`` and ``versions``: the repository's)."""
    card = service.card
    size, classes = card.input_size, len(service.labels)
    return ModelMetadata(
        name=name or card.name,
        versions=versions or [MODEL_VERSION],
        platform=f"resnet-stack_{backend_kind(service.backend_name)}",
        inputs=[
            TensorMeta(name=TENSOR_INPUT, datatype="FP32", shape=[-1, 3, size, size]),
            TensorMeta(name=IMAGE_INPUT, datatype="BYTES", shape=[-1]),
        ],
        outputs=[
            TensorMeta(name=LOGITS, datatype="FP32", shape=[-1, classes]),
            TensorMeta(name=PROBABILITIES, datatype="FP32", shape=[-1, classes]),
        ],
    )


def _classification(values: np.ndarray, k: int, labels: list[str]) -> list[bytes]:
    """Triton's classification extension: per row the top-k as ``b"value:index:label"``, shape [rows, k]."""
    if not 1 <= k <= values.shape[1]:
        raise V2Error(400, f"classification must be an integer in 1..{values.shape[1]}, not {k!r}")
    order = topk_indices(values, k)
    return [f"{values[r, i]:f}:{i}:{labels[i]}".encode() for r in range(len(values)) for i in order[r]]


async def _run(request: Request, service: ClassifyService, parsed: Parsed, deadline: float) -> np.ndarray:
    """Logits of FP32 crops, or ten-crop probabilities of images, through the shared service; deadline-bound."""
    if isinstance(parsed.values, np.ndarray):
        out = await within(request, service.infer_crops(parsed.values), deadline - time.perf_counter())
        return np.asarray(out, dtype=np.float32)
    images = parsed.values
    work = service.classify(images, parsed.crops, len(service.labels))
    out = await within(request, work, deadline - time.perf_counter())
    state_of(request).metrics.images.inc(len(images))
    probs = np.zeros((len(images), len(service.labels)), dtype=np.float32)
    for row, top in enumerate(out.results):
        for entry in top:
            probs[row, entry["index"]] = entry["probability"]
    return probs


async def infer(request: Request, routed: Routed) -> Response:
    """POST /v2/models/{name}[/versions/{version}]/infer on the version the path names (no version: the highest)."""
    started = time.perf_counter()
    settings = state_of(request).settings
    deadline = started + settings.request_timeout_s
    service = routed.service
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding not in ("", "identity"):
        raise V2Error(415, f"Content-Encoding {encoding} is not supported; send the body uncompressed")
    body = await read_body(request, deadline - time.perf_counter())
    parsed = await run_in_threadpool(
        parse_infer,
        body,
        request.headers.get(HEADER_LENGTH),
        service.card.input_size,
        service.batcher.max_queue_crops if service.batcher else 0,
        settings.max_images,
    )
    del body
    values = await _run(request, service, parsed, deadline)
    return await run_in_threadpool(_answer, routed, parsed.req, parsed.produced, values)


def _answer(routed: Routed, req: InferRequest, produced: str, values: np.ndarray) -> Response:
    service = routed.service
    wanted = req.outputs if req.outputs is not None else [OutputIn(name=produced)]
    binary_default = bool(req.parameters.binary_data_output)
    outputs, chunks = [], []
    for out in wanted:
        if out.name != produced:
            need = TENSOR_INPUT if out.name == LOGITS else IMAGE_INPUT if out.name == PROBABILITIES else None
            raise V2Error(
                400,
                f"output '{out.name}' "
                + (f"needs input '{need}'" if need else "does not exist")
                + f"; this request gives '{produced}'",
            )
        k = out.parameters.classification
        if k is not None:
            items = _classification(values, k, service.labels)
            entry: dict[str, Any] = {"name": out.name, "datatype": "BYTES", "shape": [len(values), int(k)]}
            raw, as_json = serialize_bytes(items), [b.decode() for b in items]
        else:
            entry = {"name": out.name, "datatype": "FP32", "shape": list(values.shape)}
            raw, as_json = np.ascontiguousarray(values, np.float32).tobytes(), values.reshape(-1).tolist()
        binary = out.parameters.binary_data
        if binary_default if binary is None else binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = as_json
        outputs.append(entry)
    body = {"model_name": routed.name, "model_version": routed.version, "outputs": outputs}
    if req.id is not None:
        body["id"] = req.id
    head = json.dumps(body).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(
        head + b"".join(chunks), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(head))}
    )


# ---- routes --------------------------------------------------------------------------------------------------------

TAGS: list[str | Any] = ["KServe v2 / Open Inference Protocol"]
router = APIRouter(prefix="/v2", tags=TAGS)  # health: open, like /healthz
keyed = APIRouter(prefix="/v2", tags=TAGS, dependencies=[Depends(require_api_key)], responses={401: V2_ERRORS[401]})


@router.get("/health/live", summary="Server live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server ready (503 until warmed up, and while draining)", responses={503: {}})
async def ready(request: Request) -> Response:
    e = _not_ready(request)
    if e is not None:
        return JSONResponse({"ready": False, "error": e.message}, status_code=503, headers=e.headers)
    return JSONResponse({"ready": True})


@keyed.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(
        name=SERVER_NAME,
        version=SERVER_VERSION,
        extensions=["binary_tensor_data", "classification", "model_configuration", "model_repository"],
    )


async def _path_version(version: str) -> str:
    """The ``{version}`` of a versioned route (a path parameter in the OpenAPI document)."""
    return version


async def _no_version() -> None:
    """Routes without ``{version}`` take none (not a query parameter either): the highest loaded version."""
    return None


async def _admit_versioned(request: Request, name: str, version: str) -> AsyncIterator[Routed]:
    async with contextlib.asynccontextmanager(admit_v2)(request, name, version) as routed:
        yield routed


async def _admit_latest(request: Request, name: str) -> AsyncIterator[Routed]:
    async with contextlib.asynccontextmanager(admit_v2)(request, name, None) as routed:
        yield routed


def _model_routes(prefix: str) -> None:
    errors = {s: V2_ERRORS[s] for s in (404, 503)}
    versioned = "{version}" in prefix
    version_of = _path_version if versioned else _no_version

    @keyed.get(prefix, response_model=ModelMetadata, summary="Model metadata", responses=errors)
    async def metadata(request: Request, name: str, version: str | None = Depends(version_of)) -> Any:
        v, service = _model(request, name, version)
        return model_metadata(service, v.model, _versions(request, v.model))

    @keyed.get(prefix + "/ready", summary="Model ready", responses=errors)
    async def model_ready(request: Request, name: str, version: str | None = Depends(version_of)) -> Response:
        try:
            _model(request, name, version)
        except V2Error as e:
            return JSONResponse(
                {"name": name, "ready": False, "error": e.message}, status_code=e.status, headers=e.headers
            )
        return JSONResponse({"name": name, "ready": True})

    @keyed.get(
        prefix + "/config", summary="Model configuration (Triton's model_configuration extension)", responses=errors
    )
    async def config(request: Request, name: str, version: str | None = Depends(version_of)) -> Response:
        v, service = _model(request, name, version)
        meta = model_metadata(service, v.model, _versions(request, v.model))
        return JSONResponse(
            {
                "name": meta.name,
                "platform": meta.platform,
                "max_batch_size": service.max_batch,
                "input": [
                    {
                        "name": t.name,
                        "data_type": f"TYPE_{'STRING' if t.datatype == 'BYTES' else t.datatype}",
                        "dims": t.shape[1:] or [1],
                    }
                    for t in meta.inputs
                ],
                "output": [{"name": t.name, "data_type": "TYPE_FP32", "dims": t.shape[1:]} for t in meta.outputs],
                "dynamic_batching": {"max_queue_delay_microseconds": int(service.settings.max_wait_ms * 1000)},
                "parameters": {"labels": {"string_value": json.dumps(service.labels)}},
            }
        )

    async def infer_here(
        request: Request, routed: Routed = Depends(_admit_versioned if versioned else _admit_latest)
    ) -> Response:
        return await infer(request, routed)

    infer_here.__doc__ = infer.__doc__
    keyed.add_api_route(
        prefix + "/infer",
        infer_here,
        methods=["POST"],
        summary="Inference: FP32 crops -> logits, or BYTES images -> ten-crop probabilities",
        response_class=Response,
        responses={s: V2_ERRORS[s] for s in (400, 404, 413, 415, 503, 504)},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": infer_body_schema()},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )


for _prefix in ("/models/{name}", "/models/{name}/versions/{version}"):
    _model_routes(_prefix)
routers = (router, keyed)


# ---- the model repository extension (Triton's / KServe's) ----------------------------------------------------------

repository_router = APIRouter(
    prefix="/v2/repository", tags=TAGS, dependencies=[Depends(require_api_key)], responses={401: V2_ERRORS[401]}
)


class IndexRequest(BaseModel):
    ready: bool = Field(False, description="only the versions that are READY")


class IndexEntry(BaseModel):
    name: str
    version: str = Field(description="the version; empty for a model-level problem (no version folder, config)")
    state: str = Field(description="READY, LOADING or UNAVAILABLE")
    reason: str = Field(description="why it is not READY (empty when it is)")


def _repository_error(e: RepositoryError) -> V2Error:
    return V2Error(e.status, e.message, {"Retry-After": "1"} if e.retry else None)


@repository_router.post("/index", response_model=list[IndexEntry], summary="Every model and version, with its state")
async def repository_index(request: Request, body: IndexRequest | None = None) -> Any:
    return state_of(request).repository.index(ready_only=bool(body and body.ready))


@repository_router.post(
    "/models/{name}/load",
    summary="Load (or reload) a model: its versions per the version policy; 400 with the reason when none loads, "
    "under model control mode none, or for a name that cannot be a model's",
    responses={s: V2_ERRORS[s] for s in (400, 404)},
)
async def repository_load(request: Request, name: str) -> Response:
    return await _control(state_of(request).repository.load(name))


@repository_router.post(
    "/models/{name}/unload",
    summary="Unload a model: requests already admitted finish first; later ones get 404; 400 under model control "
    "mode none or for a name that cannot be a model's",
    responses={s: V2_ERRORS[s] for s in (400, 404)},
)
async def repository_unload(request: Request, name: str) -> Response:
    return await _control(state_of(request).repository.unload(name))


async def _control(action: Awaitable[None]) -> Response:
    """A load or unload: ``{}`` when done, else the repository's refusal in KServe's error shape."""
    try:
        await action
    except RepositoryError as e:
        raise _repository_error(e) from None
    return JSONResponse({})
