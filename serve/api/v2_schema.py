"""The Open Inference Protocol's request JSON as pydantic models, its binary tensor extension, and the parse of one
request body into what ``serve.api.kserve`` runs. Every way a body can be wrong is a ``V2Error`` (400 unless said),
never an exception that escapes as a 500; the whole parse is synchronous so the router runs it in a thread pool
(large JSON bodies never hold the event loop).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator

from resnet.runtime.crops import crop_protocol

HEADER_LENGTH = "Inference-Header-Content-Length"
TENSOR_INPUT, IMAGE_INPUT = "input", "image"
LOGITS, PROBABILITIES = "logits", "probabilities"
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
DATATYPES += ("FP16", "FP32", "FP64", "BF16", "BYTES")
MAX_DIMS = 8
MAX_INPUTS = 16

Dim = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]


class V2Error(Exception):
    """An answer in the protocol's error shape ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _crops(value: Any) -> Any:
    return None if value is None else crop_protocol(value).name  # ValueError names the protocols


class TensorParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_size: Annotated[StrictInt, Field(ge=0)] | None = None
    crops: str | None = None
    _check_crops = field_validator("crops", mode="before")(_crops)


class TensorIn(BaseModel):
    name: StrictStr
    shape: Annotated[list[Dim], Field(max_length=MAX_DIMS)]
    datatype: Literal[DATATYPES]  # type: ignore[valid-type]
    parameters: TensorParameters = Field(default_factory=TensorParameters)
    data: list[Any] | None = None


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    classification: StrictInt | None = None
    binary_data: StrictBool | None = None


class OutputIn(BaseModel):
    name: StrictStr
    parameters: OutputParameters = Field(default_factory=OutputParameters)


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    crops: str | None = None
    binary_data_output: StrictBool | None = None
    _check_crops = field_validator("crops", mode="before")(_crops)


class InferRequest(BaseModel):
    id: StrictStr | None = None
    parameters: RequestParameters = Field(default_factory=RequestParameters)
    inputs: Annotated[list[TensorIn], Field(max_length=MAX_INPUTS)]
    outputs: Annotated[list[OutputIn], Field(max_length=MAX_INPUTS)] | None = None


def infer_body_schema() -> dict[str, Any]:
    """The JSON Schema of an infer request body (``InferRequest``) with its definitions inlined, for the OpenAPI
    document: what the route really requires (``inputs``; each tensor's ``name``, ``shape`` and ``datatype``)."""
    schema = InferRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline({**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


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


class V2ErrorBody(BaseModel):
    error: str = Field(description="one line for a human (the protocol's error shape)")


# ---- binary tensor extension -------------------------------------------------------------------------------------


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a request body."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise V2Error(400, f"{HEADER_LENGTH} is not an integer: {header_length[:40]!r}") from None
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


def _fp32_from_json(t: TensorIn) -> np.ndarray:
    """JSON ``data`` (flat or nested numbers) -> float32; refuses strings, booleans, ragged lists, huge integers."""
    try:
        arr = np.asarray(t.data)
    except (ValueError, TypeError, OverflowError):
        raise V2Error(400, f"input '{t.name}': data is not a list of {t.datatype} numbers (ragged or mixed)") from None
    if arr.dtype.kind == "O" and any(isinstance(x, int) and not isinstance(x, bool) for x in arr.reshape(-1)):
        raise V2Error(400, f"input '{t.name}': data holds an integer too large for {t.datatype}")
    if arr.dtype.kind not in "iuf":
        raise V2Error(400, f"input '{t.name}': data is not a list of {t.datatype} numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        return arr.astype(np.float32).reshape(-1)  # out-of-range values become inf: refused by the finiteness check


def tensor_values(t: TensorIn, binary: bytes) -> np.ndarray | list[bytes]:
    """One input's data (JSON or binary) as a float32 array of its shape, or a list of BYTES elements."""
    count = math.prod(t.shape)
    size = t.parameters.binary_data_size
    if size is not None:
        if size > len(binary):
            raise V2Error(400, f"input '{t.name}': binary_data_size {size} does not fit the binary data")
        raw = binary[:size]
        if t.datatype == "BYTES":
            items = deserialize_bytes(raw)
            if len(items) != count:
                raise V2Error(
                    400, f"input '{t.name}' has {len(items)} BYTES elements, its shape {t.shape} needs {count}"
                )
            return items
        if len(raw) != count * 4:
            raise V2Error(400, f"input '{t.name}': {len(raw)} bytes do not hold {t.shape} {t.datatype}")
        return np.frombuffer(raw, dtype="<f4").reshape(t.shape)
    if t.data is None:
        raise V2Error(400, f"input '{t.name}' has neither 'data' nor parameters.binary_data_size")
    if t.datatype == "BYTES":
        flat = np.asarray(t.data, dtype=object).reshape(-1).tolist()
        if len(flat) != count or not all(isinstance(x, str) for x in flat):
            raise V2Error(400, f"input '{t.name}': expected {count} strings (base64-encoded images)")
        try:
            return [base64.b64decode(x, validate=True) for x in flat]
        except (binascii.Error, ValueError):
            raise V2Error(400, f"input '{t.name}': BYTES data in JSON must be base64-encoded images") from None
    arr = _fp32_from_json(t)
    if arr.size != count:
        raise V2Error(400, f"input '{t.name}' has {arr.size} values, its shape {t.shape} needs {count}")
    return arr.reshape(t.shape)


# ---- one request body -> what to run -------------------------------------------------------------------------------


@dataclass
class Parsed:
    """A validated inference request: ``values`` are FP32 crops (``produced == LOGITS``) or encoded images."""

    req: InferRequest
    produced: str
    values: np.ndarray | list[bytes]
    crops: str


def _validation_message(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return (
        f"not an inference request: {where}: {first.get('msg')}"
        if where
        else f"not an inference request: {first.get('msg')}"
    )


def parse_infer(body: bytes, header_length: str | None, size: int, max_crops: int, max_images: int) -> Parsed:
    """Validate a request body (JSON, or JSON + binary tensors) for a model of ``size`` px crops. Synchronous."""
    head, binary = split_body(body, header_length)
    try:
        req = InferRequest.model_validate_json(head)
    except ValidationError as e:
        raise V2Error(400, _validation_message(e)) from None
    if len(req.inputs) != 1:
        raise V2Error(
            400,
            f"send exactly one input ('{TENSOR_INPUT}' FP32 crops or '{IMAGE_INPUT}' BYTES images), "
            f"not {len(req.inputs)}",
        )
    (t,) = req.inputs
    if t.name == TENSOR_INPUT:
        if t.datatype != "FP32":
            raise V2Error(400, f"input '{TENSOR_INPUT}' must be FP32, not {t.datatype}")
        if len(t.shape) != 4 or t.shape[1:] != [3, size, size] or t.shape[0] < 1:
            raise V2Error(400, f"input '{TENSOR_INPUT}' must have shape [N, 3, {size}, {size}], not {t.shape}")
        if t.shape[0] > max_crops:
            raise V2Error(413, f"{t.shape[0]} crops in one request; the queue holds {max_crops}")
        values = tensor_values(t, binary)
        assert isinstance(values, np.ndarray)
        if not np.isfinite(values).all():
            raise V2Error(400, f"input '{TENSOR_INPUT}' holds NaN or infinite values (or numbers beyond FP32)")
        return Parsed(req, LOGITS, values, "ten")
    if t.name == IMAGE_INPUT:
        if t.datatype != "BYTES":
            raise V2Error(400, f"input '{IMAGE_INPUT}' must be BYTES (encoded images), not {t.datatype}")
        if not (len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1)) or t.shape[0] < 1:
            raise V2Error(400, f"input '{IMAGE_INPUT}' must have shape [B] or [B, 1], not {t.shape}")
        if t.shape[0] > max_images:
            raise V2Error(413, f"{t.shape[0]} images in one request; the limit is {max_images}")
        crops = req.parameters.crops or t.parameters.crops or "ten"
        return Parsed(req, PROBABILITIES, list(tensor_values(t, binary)), crops)
    raise V2Error(400, f"unknown input '{t.name}'; inputs are '{TENSOR_INPUT}' (FP32) and '{IMAGE_INPUT}' (BYTES)")
