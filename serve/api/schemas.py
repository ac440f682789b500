"""Pydantic response models: the JSON shapes of docs/DESIGN.md §4, as /docs shows them."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    index: int = Field(description="class index in the model card's labels")
    label: str = Field(description="class name from the model card")
    probability: float = Field(
        description="mean of the per-crop softmax (ten-crop), the centre crop's softmax, or the mean softmax over "
        "every multi-scale view"
    )


class ImageResult(BaseModel):
    filename: str | None = Field(None, description="the multipart file name, if the client sent one")
    topk: list[Prediction] = Field(description="the k most probable classes, most probable first")


class Timings(BaseModel):
    decode_ms: float = Field(description="decoding, resizing and cropping the request's images (in parallel)")
    queue_ms: float = Field(description="longest wait of the request's crops for a batch")
    inference_ms: float = Field(description="backend time of the batch(es) that ran the request's crops")
    total_ms: float = Field(description="request start (before reading the body) to the answer")


class ClassifyResponse(BaseModel):
    model: str = Field(description="the model that answered: its repository name (with --model: the card's name)")
    version: str | None = Field(None, description="the version of the model that answered")
    backend: str = Field(description="what ran the model, e.g. onnxruntime:CPUExecutionProvider")
    precision: str | None = Field(None, description="what the model computes in: fp32, fp16, int8 or bf16")
    crops: str = Field(description="'ten', 'center' or 'multiscale'")
    results: list[ImageResult] = Field(description="one entry per image, in request order")
    timings: Timings
    batch_sizes: list[int] = Field(description="crops in the backend batch(es) the request's crops rode in")
    sides: list[int] | None = Field(
        None, description="multiscale only: the shorter sides (pixels) each image was tested at, with its mirror"
    )


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. bad_image, image_too_large, queue_full")
    message: str = Field(description="one line for a human")


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    model: str | None = None
    backend: str | None = None
    precision: str | None = None
    report: str | None = None  # the parity report that admitted what is served; None when none was needed
    preprocess: str | None = None  # where crops are cut and normalised: "host", or the device ("cuda:0", "cpu")
    preprocess_check: str | None = None  # a device's crops and logits against the host path's, checked at load
    detail: str | None = None
