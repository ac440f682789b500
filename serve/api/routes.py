"""The server's own routes: ``classify`` (POST /classify) and ``ops`` (/healthz, /readyz, /metrics, /docs and the
OpenAPI schema). They reach models only through the typed state's repository (``serve.api.state``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import UploadFile

from resnet.runtime.crops import CropName

from ..settings import Settings
from .http import (
    ApiError,
    error_response,
    openapi_errors,
    require_api_key,
    require_api_key_unless_public,
    within,
)
from .routing import Routed, admit_model, server_unavailable
from .schemas import ClassifyResponse, ErrorResponse, Health, ImageResult, Timings
from .state import state_of

RAW_TYPES = ("image/", "application/octet-stream")

classify_router = APIRouter()
ops_router = APIRouter()
docs_router = APIRouter(dependencies=[Depends(require_api_key_unless_public)], include_in_schema=False)


async def _read_images(request: Request, settings: Settings) -> tuple[list[bytes], list[str | None]]:
    """The request's images: multipart ``file`` fields, or one raw body with an image content type."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=settings.max_images + 1, max_fields=100)
        try:
            files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
            if not files:
                raise ApiError(422, "no_image", "multipart body has no 'file' field holding an image")
            if len(files) > settings.max_images:
                raise ApiError(
                    413, "too_many_images", f"{len(files)} images in one request; the limit is {settings.max_images}"
                )
            return [await f.read() for f in files], [f.filename for f in files]
        finally:
            await form.close()
    if ctype.startswith(RAW_TYPES):
        return [await request.body()], [None]
    raise ApiError(
        415,
        "unsupported_media_type",
        f"send multipart/form-data with 'file' fields or a raw image body (image/*), not {ctype[:60] or 'no content type'}",
    )


@classify_router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses={
        **openapi_errors(400, 401, 413, 415, 422, 503, 504),
        404: {"model": ErrorResponse, "description": "model or version not loaded"},
    },
    dependencies=[Depends(require_api_key)],
    summary="Classify images: ten-crop (or centre-crop, or the paper's multi-scale test) top-k",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "minItems": 1,
                                "maxItems": 64,
                            }
                        },
                        "required": ["file"],
                    }
                },
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def classify(
    request: Request,
    topk: int = Query(5, ge=1, le=1000, description="how many classes per image"),
    crops: CropName = Query(
        "ten",
        description="ten-crop (paper), centre crop, or multiscale: the paper's fully-convolutional multi-scale test "
        "(whole image at several shorter sides, each with its mirror; 422 multiscale_unavailable on a model that "
        "takes only its S x S input, 413 request_too_large over --max-multiscale-pixels)",
    ),
    routed: Routed = Depends(admit_model),
) -> ClassifyResponse:
    started = time.perf_counter()
    service = routed.service
    settings: Settings = state_of(request).settings
    metrics = state_of(request).metrics
    deadline = started + settings.request_timeout_s
    if topk > len(service.labels):
        raise ApiError(422, "invalid_parameter", f"topk: must be <= {len(service.labels)} (the model's classes)")
    try:
        images, names = await asyncio.wait_for(_read_images(request, settings), deadline - time.perf_counter())
    except asyncio.TimeoutError:
        raise ApiError(504, "deadline_exceeded", "request body not received within the deadline") from None
    out = await within(request, service.classify(images, crops, topk), deadline - time.perf_counter())
    total = time.perf_counter() - started
    for stage, secs in (("decode", out.decode_s), ("queue", out.queue_s), ("inference", out.inference_s)):
        metrics.latency.labels(stage).observe(secs)
    metrics.latency.labels("total").observe(total)
    metrics.images.inc(len(images))
    return ClassifyResponse(
        model=routed.name,
        version=routed.version,
        backend=service.backend_name,
        precision=service.precision,
        crops=crops,
        results=[ImageResult(filename=n, topk=r) for n, r in zip(names, out.results)],
        timings=Timings(
            decode_ms=out.decode_s * 1e3,
            queue_ms=out.queue_s * 1e3,
            inference_ms=out.inference_s * 1e3,
            total_ms=total * 1e3,
        ),
        batch_sizes=out.batch_sizes,
        sides=out.sides,
    )


@classify_router.api_route("/classify", methods=["GET", "PUT", "DELETE", "PATCH"], include_in_schema=False)
async def classify_wrong_method(request: Request) -> JSONResponse:
    return error_response(405, "method_not_allowed", f"{request.method} /classify: use POST", {"Allow": "POST"})


def _failure(request: Request) -> str | None:
    state = state_of(request)
    return state.failed or (state.service.failed if state.service is not None else None)


@ops_router.get("/healthz", response_model=Health, responses={503: {"model": Health}}, summary="Process alive")
async def healthz(request: Request) -> Any:
    """200 while the process can serve (warming up included); 503 once the backend has failed (restart it)."""
    failed = _failure(request)
    if failed:
        return JSONResponse(Health(status="failed", detail=failed).model_dump(), status_code=503)
    return Health(status="ok")


@ops_router.get("/readyz", response_model=Health, responses={503: {"model": Health}}, summary="Loaded and warmed up")
async def readyz(request: Request) -> Any:
    """200 once the model (with a repository: at least one model version) is loaded and warmed up; 503 before,
    while draining, and once failed."""
    service = state_of(request).service
    why = server_unavailable(request)
    if why == "failed":
        return JSONResponse(Health(status="failed", detail=_failure(request)).model_dump(), status_code=503)
    if why is not None:
        state = "draining" if why == "draining" else "warming_up"
        return JSONResponse(Health(status=state).model_dump(), status_code=503, headers={"Retry-After": "1"})
    if service is None:  # a repository whose default model is not loaded: another model is
        return Health(status="ready")
    return Health(
        status="ready",
        model=service.card.name,
        backend=service.backend_name,
        precision=service.precision,
        report=service.report,
        preprocess=service.preprocess_on,
        preprocess_check=service.preprocess_check,
    )


@ops_router.get(
    "/metrics",
    summary="Prometheus metrics (behind the API key unless --public-metrics)",
    response_class=Response,
    dependencies=[Depends(require_api_key_unless_public)],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}, **openapi_errors(401)},
)
async def metrics_endpoint(request: Request) -> Response:
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


@docs_router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@docs_router.get("/docs")
async def docs(request: Request) -> Response:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=request.app.title + " - docs")
