"""KServe v2 / Open Inference Protocol (REST) on our server, so Triton's and KServe's clients work against it.

Routes (``create_router(api_key_dependency)``, included by ``serve.app.create_app``):

- ``GET /v2`` server metadata · ``GET /v2/health/live`` · ``GET /v2/health/ready`` (503 until warmed up / draining)
- ``GET /v2/models/{name}`` model metadata · ``GET /v2/models/{name}/ready`` · ``GET /v2/models/{name}/config``
- ``POST /v2/models/{name}/infer`` (also under ``/versions/1``) with exactly one input:
    * ``input``  FP32  ``[N, 3, S, S]`` crops already pre-processed (``resnet.preprocess``) -> ``logits`` FP32 [N, C]
    * ``image``  BYTES ``[B]`` encoded images (JPEG, PNG, ...; base64 strings in JSON form) -> ``probabilities``
      FP32 [B, C], the ten-crop (request parameter ``crops``: ``ten`` default, or ``center``) mean softmax.

Both tensor encodings of the protocol are accepted and produced: JSON ``data`` and the binary tensor extension
(``Inference-Header-Content-Length``; tritonclient's default). The classification extension works too: ask for an
output with ``parameters.classification = k`` (tritonclient ``class_count=k``) and get BYTES ``"value:index:label"``.

Crops go through the same ``app.state.service`` as ``/classify`` (the shared batching queue), so both protocols
batch together. Errors here use the protocol's shape ``{"error": "message"}`` that its clients parse (the statuses
are DESIGN.md §4's: 400 bad tensor, 404 unknown model, 413/415 image limits, 503 + Retry-After, 504 deadline); the
shared API-key check answers 401 with the server's usual error body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from resnet.preprocess import CROPS, topk_indices

from .batcher import BackendFailed, QueueFull
from .service import ImageError

HEADER_LENGTH = "Inference-Header-Content-Length"
SERVER_NAME, SERVER_VERSION = "resnet-stack", "0.1.0"
MODEL_VERSION = "1"
TENSOR_INPUT, IMAGE_INPUT = "input", "image"
LOGITS, PROBABILITIES = "logits", "probabilities"
DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32}


class V2Error(Exception):
    """An answer in the protocol's error shape."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _error(e: V2Error) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)


# ---- request / response models (the protocol's JSON) -------------------------------------------------------------


class TensorIn(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class OutputIn(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TensorIn]
    outputs: list[OutputIn] | None = None


class TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


# ---- binary tensor extension -------------------------------------------------------------------------------------


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a request body."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise V2Error(400, f"{HEADER_LENGTH} is not an integer: {header_length!r}") from None
    if not 0 <= n <= len(body):
        raise V2Error(400, f"{HEADER_LENGTH} {n} is outside the body of {len(body)} bytes")
    return body[:n], body[n:]


def deserialize_bytes(raw: bytes) -> list[bytes]:
    """The protocol's BYTES encoding: each element a 4-byte little-endian length, then that many bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise V2Error(400, "BYTES tensor data ends inside an element's length prefix")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise V2Error(400, f"BYTES element of {n} bytes runs past the end of the tensor data")
        out.append(raw[i : i + n])
        i += n
    return out


def serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _numel(shape: list[int]) -> int:
    if any(d < 0 for d in shape):
        raise V2Error(400, f"shape {shape} has a negative dimension")
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _tensor_values(t: TensorIn, binary: bytes, offset: int) -> tuple[np.ndarray | list[bytes], int]:
    """Decode one input's data (JSON or binary); returns (values, new binary offset)."""
    size = t.parameters.get("binary_data_size")
    count = _numel(t.shape)
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise V2Error(400, f"input '{t.name}': binary_data_size {size!r} does not fit the binary data")
        raw = binary[offset : offset + size]
        offset += size
        if t.datatype == "BYTES":
            items = deserialize_bytes(raw)
            if len(items) != count:
                raise V2Error(
                    400, f"input '{t.name}' has {len(items)} BYTES elements, its shape {t.shape} needs {count}"
                )
            return items, offset
        dtype = DTYPES.get(t.datatype)
        if dtype is None:
            raise V2Error(400, f"input '{t.name}': datatype {t.datatype} is not supported")
        if len(raw) != count * np.dtype(dtype).itemsize:
            raise V2Error(400, f"input '{t.name}': {len(raw)} bytes do not hold {t.shape} {t.datatype}")
        return np.frombuffer(raw, dtype=dtype).reshape(t.shape), offset
    if t.data is None:
        raise V2Error(400, f"input '{t.name}' has neither 'data' nor parameters.binary_data_size")
    if t.datatype == "BYTES":
        flat = np.asarray(t.data, dtype=object).reshape(-1).tolist()
        if len(flat) != count or not all(isinstance(x, str) for x in flat):
            raise V2Error(400, f"input '{t.name}': expected {count} strings (base64-encoded images)")
        try:
            return [base64.b64decode(x, validate=True) for x in flat], offset
        except (binascii.Error, ValueError):
            raise V2Error(400, f"input '{t.name}': BYTES data in JSON must be base64-encoded images") from None
    dtype = DTYPES.get(t.datatype)
    if dtype is None:
        raise V2Error(400, f"input '{t.name}': datatype {t.datatype} is not supported")
    try:
        arr = np.asarray(t.data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError):
        raise V2Error(400, f"input '{t.name}': data is not a list of {t.datatype} numbers") from None
    if arr.size != count:
        raise V2Error(400, f"input '{t.name}' has {arr.size} values, its shape {t.shape} needs {count}")
    return arr.reshape(t.shape), offset


# ---- the router --------------------------------------------------------------------------------------------------


def _ready_service(request: Request) -> Any:
    service = request.app.state.service
    if service is None or not service.ready or service.draining or request.app.state.failed:
        why = "draining" if service is not None and service.draining else "not ready (warming up)"
        raise V2Error(503, f"server is {why}; retry shortly", {"Retry-After": "1"})
    return service


def _model(request: Request, name: str, version: str | None) -> Any:
    service = request.app.state.service
    if service is None:
        raise V2Error(503, "model is loading; retry shortly", {"Retry-After": "1"})
    if name != service.card.name:
        raise V2Error(404, f"unknown model '{name}'; this server serves '{service.card.name}'")
    if version not in (None, "", MODEL_VERSION):
        raise V2Error(404, f"model '{name}' has no version '{version}' (only '{MODEL_VERSION}')")
    return service


def backend_kind(backend_name: str) -> str:
    """``"onnxruntime:CPUExecutionProvider"`` -> ``"onnxruntime"``."""
    m = re.match(r"[A-Za-z0-9_.-]+", backend_name.strip())
    return m.group(0) if m else "unknown"


def model_metadata(service: Any) -> ModelMetadata:
    card = service.card
    size, classes = card.input_size, len(service.labels)
    return ModelMetadata(
        name=card.name,
        versions=[MODEL_VERSION],
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


def _classification(values: np.ndarray, k: Any, labels: list[str]) -> list[bytes]:
    """Triton's classification extension: per row the top-k as ``b"value:index:label"``, shape [rows, k]."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= values.shape[1]:
        raise V2Error(400, f"classification must be an integer in 1..{values.shape[1]}, not {k!r}")
    order = topk_indices(values, k)
    return [f"{values[r, i]:f}:{i}:{labels[i]}".encode() for r in range(len(values)) for i in order[r]]


async def _run(request: Request, service: Any, req: InferRequest, values: Any, crops: str) -> np.ndarray:
    """Logits of FP32 crops, or ten-crop probabilities of images, through the shared service; deadline-bound."""
    settings = request.app.state.settings
    state, metrics = request.app.state, request.app.state.metrics
    state.in_flight += 1  # the SIGTERM drain waits for these, like /classify's
    metrics.in_flight.inc()
    try:
        if isinstance(values, np.ndarray):
            work = service.infer_crops(values)
        else:
            work = service.classify(values, crops, len(service.labels))
        out = await asyncio.wait_for(work, settings.request_timeout_s)
    except asyncio.TimeoutError:
        raise V2Error(504, f"no answer within the {settings.request_timeout_s:g} s deadline") from None
    except QueueFull as e:
        metrics.rejected.labels("queue_full").inc()
        raise V2Error(503, f"server busy: {e}; retry shortly", {"Retry-After": "1"}) from None
    except BackendFailed as e:
        raise V2Error(503, f"inference failed: {e}", {"Retry-After": "1"}) from None
    except ImageError as e:
        raise V2Error(e.status, e.message) from None
    finally:
        state.in_flight -= 1
        metrics.in_flight.dec()
    if isinstance(values, np.ndarray):
        return np.asarray(out, dtype=np.float32)
    metrics.images.inc(len(values))
    probs = np.zeros((len(values), len(service.labels)), dtype=np.float32)
    for row, top in enumerate(out.results):
        for entry in top:
            probs[row, entry["index"]] = entry["probability"]
    return probs


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """POST /v2/models/{name}/infer."""
    try:
        service = _model(request, name, version)
        service = _ready_service(request)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding not in ("", "identity"):
            raise V2Error(415, f"Content-Encoding {encoding} is not supported; send the body uncompressed")
        head, binary = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
        try:
            req = InferRequest.model_validate_json(head)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise V2Error(400, f"not an inference request: {where}: {first.get('msg')}") from None
        return _answer(request, service, req, await _infer(request, service, req, binary))
    except V2Error as e:
        return _error(e)


async def _infer(request: Request, service: Any, req: InferRequest, binary: bytes) -> tuple[str, np.ndarray]:
    if len(req.inputs) != 1:
        raise V2Error(
            400,
            f"send exactly one input ('{TENSOR_INPUT}' FP32 crops or '{IMAGE_INPUT}' BYTES images), "
            f"not {len(req.inputs)}",
        )
    (t,) = req.inputs
    size = service.card.input_size
    if t.name == TENSOR_INPUT:
        if t.datatype != "FP32":
            raise V2Error(400, f"input '{TENSOR_INPUT}' must be FP32, not {t.datatype}")
        if len(t.shape) != 4 or t.shape[1:] != [3, size, size] or t.shape[0] < 1:
            raise V2Error(400, f"input '{TENSOR_INPUT}' must have shape [N, 3, {size}, {size}], not {t.shape}")
        limit = service.batcher.max_queue_crops
        if t.shape[0] > limit:
            raise V2Error(413, f"{t.shape[0]} crops in one request; the queue holds {limit}")
        values, _ = _tensor_values(t, binary, 0)
        if not np.isfinite(values).all():
            raise V2Error(400, f"input '{TENSOR_INPUT}' holds NaN or infinite values")
        return LOGITS, await _run(request, service, req, values, "ten")
    if t.name == IMAGE_INPUT:
        if t.datatype != "BYTES":
            raise V2Error(400, f"input '{IMAGE_INPUT}' must be BYTES (encoded images), not {t.datatype}")
        if not (len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1)) or t.shape[0] < 1:
            raise V2Error(400, f"input '{IMAGE_INPUT}' must have shape [B] or [B, 1], not {t.shape}")
        max_images = request.app.state.settings.max_images
        if t.shape[0] > max_images:
            raise V2Error(413, f"{t.shape[0]} images in one request; the limit is {max_images}")
        crops = req.parameters.get("crops", t.parameters.get("crops", "ten"))
        if crops not in CROPS:
            raise V2Error(400, f"parameter crops must be one of {sorted(CROPS)}, not {crops!r}")
        values, _ = _tensor_values(t, binary, 0)
        return PROBABILITIES, await _run(request, service, req, list(values), crops)
    raise V2Error(400, f"unknown input '{t.name}'; inputs are '{TENSOR_INPUT}' (FP32) and '{IMAGE_INPUT}' (BYTES)")


def _answer(request: Request, service: Any, req: InferRequest, result: tuple[str, np.ndarray]) -> Response:
    produced, values = result
    wanted = req.outputs if req.outputs is not None else [OutputIn(name=produced)]
    binary_default = bool(req.parameters.get("binary_data_output", False))
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
        k = out.parameters.get("classification")
        if k is not None:
            items = _classification(values, k, service.labels)
            entry: dict[str, Any] = {"name": out.name, "datatype": "BYTES", "shape": [len(values), int(k)]}
            raw, as_json = serialize_bytes(items), [b.decode() for b in items]
        else:
            entry = {"name": out.name, "datatype": "FP32", "shape": list(values.shape)}
            raw, as_json = np.ascontiguousarray(values, np.float32).tobytes(), values.reshape(-1).tolist()
        if out.parameters.get("binary_data", binary_default):
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = as_json
        outputs.append(entry)
    body = {"model_name": service.card.name, "model_version": MODEL_VERSION, "outputs": outputs}
    if req.id is not None:
        body["id"] = req.id
    head = json.dumps(body).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(
        head + b"".join(chunks), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(head))}
    )


def create_router(api_key: Callable[..., Any]) -> APIRouter:
    """The /v2 routes; ``api_key`` is the server's API-key dependency (applied to inference, not to health)."""
    router = APIRouter(prefix="/v2", tags=["KServe v2 / Open Inference Protocol"])

    @router.get("", response_model=ServerMetadata, summary="Server metadata")
    async def server_metadata() -> ServerMetadata:
        return ServerMetadata(
            name=SERVER_NAME,
            version=SERVER_VERSION,
            extensions=["binary_tensor_data", "classification", "model_configuration"],
        )

    @router.get("/health/live", summary="Server live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/health/ready", summary="Server ready (503 until warmed up, and while draining)")
    async def ready(request: Request) -> Response:
        try:
            _ready_service(request)
        except V2Error as e:
            return JSONResponse({"ready": False, "error": e.message}, status_code=503, headers=e.headers)
        return JSONResponse({"ready": True})

    for prefix in ("/models/{name}", "/models/{name}/versions/{version}"):

        @router.get(prefix, response_model=ModelMetadata, summary="Model metadata")
        async def metadata(request: Request, name: str, version: str | None = None) -> Any:
            try:
                return model_metadata(_model(request, name, version))
            except V2Error as e:
                return _error(e)

        @router.get(prefix + "/ready", summary="Model ready")
        async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
            try:
                _model(request, name, version)
                _ready_service(request)
            except V2Error as e:
                return JSONResponse(
                    {"name": name, "ready": False, "error": e.message}, status_code=e.status, headers=e.headers
                )
            return JSONResponse({"name": name, "ready": True})

        @router.get(prefix + "/config", summary="Model configuration (Triton's model_configuration extension)")
        async def config(request: Request, name: str, version: str | None = None) -> Response:
            try:
                service = _model(request, name, version)
            except V2Error as e:
                return _error(e)
            meta = model_metadata(service)
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

        router.add_api_route(
            prefix + "/infer",
            infer,
            methods=["POST"],
            dependencies=[Depends(api_key)],
            summary="Inference: FP32 crops -> logits, or BYTES images -> ten-crop probabilities",
            response_class=Response,
        )
    return router
