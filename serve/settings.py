"""Server settings: one dataclass filled from the command line, then ``RESNET_SERVE_*`` environment variables.

Each field's help text is the single source for ``--help`` and docs/serving.md's table; a command-line flag wins over
its environment variable, which wins over the default (12-factor).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet import UsageError
from resnet.dataclass_cli import UsageParser, add_options, env_name, flag, option, values_from
from resnet.names import is_torchvision_spec, parse_torchvision_spec
from resnet.runtime.kinds import ServePrecision

ENV_PREFIX = "RESNET_SERVE_"
DEFAULT_WEB_DIR = Path(__file__).resolve().parent.parent / "clients" / "web"


class ModelControl(str, enum.Enum):
    """Who changes the loaded models, as Triton's model control modes: ``none`` = nobody after the start (load and
    unload requests are refused); ``poll`` = the folder (rescanned) and requests; ``explicit`` = requests only."""

    NONE = "none"
    POLL = "poll"
    EXPLICIT = "explicit"


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return option(default, help, **extra)


@dataclass
class Settings:
    """Everything the server can be told. Field name ``x_y`` is flag ``--x-y`` and env ``RESNET_SERVE_X_Y``."""

    model: str = _opt(
        "",
        "model artifact: a .plan engine (+ .plan.json), an .onnx/.fp16.onnx export or a .pt checkpoint; or "
        "torchvision:ARCH[:WEIGHTS] (e.g. torchvision:resnet50:IMAGENET1K_V2; weights DEFAULT when not named) to "
        "serve torchvision's named weights from the torch hub cache on PyTorch",
    )
    model_repository: str = _opt(
        "",
        "a model repository folder in Triton's layout (NAME/config.pbtxt, NAME/VERSION/ARTIFACT): every model in it "
        "is served by name (/classify?model=NAME, /v2/models/NAME); instead of --model (docs/model-repository.md)",
    )
    model_control_mode: str = _opt(
        "none",
        "as Triton names them: none = serve what is there at start, POST /v2/repository/models/NAME/load|unload "
        "answer 400; poll = also rescan every --repository-poll-secs and load, swap and unload versions as the folder "
        "changes (load/unload requests work too); explicit = load what is there at start, then change only on "
        "POST /v2/repository/models/NAME/load|unload",
        choices=tuple(m.value for m in ModelControl),
    )
    repository_poll_secs: float = _opt(5.0, "with --model-control-mode poll: seconds between rescans")
    follow_outside_symlinks: bool = _opt(
        False,
        "with --model-repository: follow symlinks (model folders, version folders, files) whose target lies outside "
        "the repository folder; by default such an entry is UNAVAILABLE with the reason",
    )
    max_config_bytes: int = _opt(
        1 << 20, "with --model-repository: largest config.pbtxt read; a larger one makes its model UNAVAILABLE"
    )
    default_model: str = _opt(
        "", "the model /classify serves when the request names none; empty = the repository's first model by name"
    )
    max_loaded_models: int = _opt(
        0, "most model versions loaded at once (a swap's new version counts in place of the old); 0 = no bound"
    )
    max_model_memory_mb: int = _opt(
        0,
        "memory the loaded models may take, by their estimate (weights x sessions + overhead), in MiB; a load that "
        "would exceed it is refused with the reason; 0 = what the machine has available when the load starts",
    )
    download_weights: bool = _opt(
        False, "with --model torchvision:...: download the named weights when they are not in the torch hub cache"
    )
    check_hash: bool = _opt(
        True,
        "with --model torchvision:...: check the cached file's SHA-256 against the digits in its name "
        "(--no-check-hash skips it)",
    )
    backend: str = _opt(
        "auto",
        "auto | tensorrt | cuda | onnxruntime | torch; auto picks the fastest that works for the artifact here "
        "(.onnx: TensorRT, then CUDA, then CPU execution provider, each verified); tensorrt/cuda on an .onnx exit 4 "
        "with ONNX Runtime's reason when that provider does not load",
        choices=("auto", "tensorrt", "cuda", "onnxruntime", "torch"),
    )
    trt_cache: str = _opt(
        "",
        "folder for ONNX Runtime's TensorRT engine and timing caches; empty = <model>.trt_cache beside the model",
    )
    host: str = _opt("127.0.0.1", "address to listen on (0.0.0.0 for all interfaces)")
    port: int = _opt(8000, "TCP port to listen on")
    max_batch: int = _opt(
        0,
        "most crops per backend batch; 0 = the engine's max profile, a model fed on a GPU (--device-preprocess) "
        "measures it at start-up "
        "(the fewest crops within a tenth of the best crops/s, of 10..320), else 64",
    )
    device_preprocess: str = _opt(
        "auto",
        "auto | on | off: where crops, mirrors and normalisation run; auto = on the GPU when the model runs on one "
        "(a checkpoint on CUDA, ONNX Runtime's CUDA or TensorRT provider, a .plan engine) and PyTorch is installed: "
        "resized uint8 images go over from pinned memory, the next batch while the last one runs; on = in PyTorch "
        "on the model's device, the CPU included (the GPU's code path, for A/B runs); off = on the host (numpy)",
        choices=("auto", "on", "off"),
    )
    max_wait_ms: float = _opt(2.0, "longest a crop waits for its batch to fill, in milliseconds")
    batch_sizes: str = _opt(
        "",
        "comma-separated batch shapes the backend runs (batches are padded up to a warm one; ready once the smallest "
        "is warm, the rest warm in the background while idle, ten-crop's first); empty = "
        "1,2,4,8,10,16,20,30,32,40,50,60,64 clipped to max-batch",
    )
    max_queue_crops: int = _opt(
        1024,
        "bound on crops waiting for a batch (a multi-scale view of H x W counts ceil(H*W / S^2)); beyond it "
        "/classify answers 503 + Retry-After",
    )
    request_timeout_s: float = _opt(30.0, "per-request deadline (decode + queue + inference); past it 504")
    max_body_bytes: int = _opt(16 * 1024 * 1024, "largest request body, enforced while reading (413)")
    max_pixels: int = _opt(40_000_000, "largest image in pixels (width x height) before decoding (413)")
    max_aspect: float = _opt(50.0, "most elongated image accepted (long side / short side), bounds the resized size")
    max_images: int = _opt(64, "most images in one request (413)")
    multiscale: str = _opt(
        "auto",
        "auto | on | off: /classify?crops=multiscale (the paper's multi-scale test: whole image at several scales "
        "and its mirror); auto = on when the model takes any height and width (an .onnx from export.onnx: a second "
        "ONNX Runtime session for the views, the S x S one keeps its fixed-size speed), on = refuse to start on a "
        "model that does not (exit 2), off = 422 multiscale_unavailable and one session",
        choices=("auto", "on", "off"),
    )
    max_multiscale_pixels: int = _opt(
        10_000_000,
        "most pixels of all multi-scale views in one request (every scale and mirror of every image, from the image "
        "headers before decoding; 413): about 4 photos of 4:3 at the paper's 5 scales (2.4 M each)",
    )
    draft: bool = _opt(
        True,
        "JPEG draft mode: DCT-reduce JPEGs >= 4x the resize size while decoding (faster; --no-draft = exact "
        "torchvision result for every image)",
    )
    decode_threads: int = _opt(
        0,
        "threads decoding and resizing images off the event loop; 0 = CPU count. Large images hold at most this "
        "many; small ones (--decode-small-pixels) have one more thread of their own and go first",
    )
    max_decode_pixels: int = _opt(
        100_000_000,
        "bound on the decode queue, in pixels of decoding cost (from the image headers: width x height, baseline "
        "JPEGs at their draft size, progressive JPEGs at full size x scans / 10; queued or decoding), kept "
        "separately for small and large images; a request past it gets 503 + Retry-After",
    )
    decode_small_pixels: int = _opt(
        1_000_000,
        "decoding is fair by cost: images costing at most this many pixels (see --max-decode-pixels) are small, "
        "decoded before large ones on a thread large ones never take (a thumbnail never waits behind a 4-megapixel "
        "PNG or a 36-megapixel progressive JPEG); then round-robin between requests",
    )
    max_jpeg_scans: int = _opt(
        32,
        "most scans in one JPEG, counted from its markers before decoding (413 too_many_scans): a progressive JPEG "
        "has about 10, and each scan is another pass over the whole image (a scan bomb repeats one thousands of "
        "times)",
    )
    workers: int = _opt(
        1,
        "server processes sharing the port (a supervisor binds it once, starts N workers and replaces any that dies; "
        "/metrics is the whole server's); 1 = one process, no supervisor; 0 = one per 4 CPU cores, 1 to 8 (one "
        "process keeps 2-4 cores busy on the CPU path, a GPU needs several to feed it). Each worker keeps --threads and "
        "--decode-threads as given (0 = every core; its pools do not spin, so idle workers cost nothing)",
    )
    threads: int = _opt(0, "backend CPU threads (ONNX Runtime intra-op / torch); 0 = CPU count")
    precision: str = _opt(
        "auto",
        "auto | fp32 | fp16 | int8 | bf16: with --model DIR (a run or export folder), auto times every artifact "
        "there whose parity report passed (.onnx, .fp16.onnx, .int8.onnx; the checkpoint with bf16 autocast) at "
        "start-up and serves the fastest, a precision picks that artifact; with a file it must match the file (a "
        "checkpoint or torchvision:ARCH: fp32 when auto, or bf16 / fp16 autocast, fp16 on CUDA only)",
        choices=tuple(p.value for p in ServePrecision),
    )
    api_key: str = _opt(
        "",
        "if set, /classify and /v2 (all but its health routes) need 'Authorization: Bearer KEY' or 'X-API-Key: KEY', "
        "and so do /metrics and /docs unless --public-metrics",
    )
    cors_origins: str = _opt("", "comma-separated origins allowed by CORS; empty = CORS off")
    web_dir: str = _opt(str(DEFAULT_WEB_DIR), "folder served at / (the upload page); empty or missing = none")
    drain_grace_s: float = _opt(0.0, "after SIGTERM, keep answering /readyz 503 at least this long before exiting")
    drain_timeout_s: float = _opt(
        30.0, "after SIGTERM, bound on the whole exit; requests still running then get 503 + Retry-After"
    )
    log_level: str = _opt("info", "log level: debug | info | warning | error")
    # Robustness against hostile clients (bounds applied before the app sees a request, and per request).
    public_metrics: bool = _opt(
        False, "with --api-key: leave /metrics, /docs and /openapi.json open (else they need the key)"
    )
    max_request_pixels: int = _opt(
        200_000_000, "most decoded pixels (sum of width x height) in one request, checked before decoding (413)"
    )
    max_header_bytes: int = _opt(
        65536, "largest request head (request line + headers) in bytes (431, connection closed)"
    )
    max_headers: int = _opt(100, "most header fields in one request (431, connection closed)")
    header_timeout_s: float = _opt(
        10.0, "a connection must finish sending a request's headers within this (else closed)"
    )
    keep_alive_timeout_s: float = _opt(5.0, "an idle keep-alive connection is closed after this many seconds")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``UsageError`` for values that make no sense."""
        positive = (
            "max_wait_ms",
            "request_timeout_s",
            "max_body_bytes",
            "max_pixels",
            "max_aspect",
            "max_images",
            "max_jpeg_scans",
        )
        for name in positive:
            if getattr(self, name) <= 0 and not (name == "max_wait_ms" and self.max_wait_ms == 0):
                raise UsageError(f"--{name.replace('_', '-')} must be > 0, not {getattr(self, name)}")
        nonneg = ("max_batch", "max_queue_crops", "decode_threads", "threads", "port", "decode_small_pixels", "workers")
        for name in nonneg:
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, not {getattr(self, name)}")
        if self.max_queue_crops == 0:
            raise UsageError("--max-queue-crops must be > 0")
        limits = (
            "max_request_pixels",
            "max_multiscale_pixels",
            "max_decode_pixels",
            "max_header_bytes",
            "max_headers",
            "header_timeout_s",
            "keep_alive_timeout_s",
        )
        for name in limits:
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be > 0, not {getattr(self, name)}")
        self.parsed_batch_sizes()
        self.validate_repository()
        if is_torchvision_spec(self.model):
            parse_torchvision_spec(self.model)
        elif self.model and (self.download_weights or not self.check_hash):
            raise UsageError("--download-weights and --no-check-hash go with --model torchvision:ARCH[:WEIGHTS]")

    def validate_repository(self) -> None:
        """The model-repository flags: one source of models, sensible poll period and bounds."""
        if self.model and self.model_repository:
            raise UsageError("pass --model or --model-repository, not both")
        if self.repository_poll_secs <= 0:
            raise UsageError(f"--repository-poll-secs must be > 0, not {self.repository_poll_secs}")
        if self.max_config_bytes <= 0:
            raise UsageError(f"--max-config-bytes must be > 0, not {self.max_config_bytes}")
        for name in ("max_loaded_models", "max_model_memory_mb"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, not {getattr(self, name)}")
        if self.model_repository and not Path(self.model_repository).is_dir():
            raise UsageError(f"--model-repository {self.model_repository}: no such folder")

    def parsed_batch_sizes(self) -> list[int]:
        """The explicit ``batch_sizes`` as sorted ints (empty list = the default set)."""
        if not self.batch_sizes.strip():
            return []
        try:
            sizes = sorted({int(s) for s in self.batch_sizes.split(",") if s.strip()})
        except ValueError:
            raise UsageError(f"--batch-sizes must be comma-separated integers, not {self.batch_sizes!r}") from None
        if not sizes or sizes[0] < 1:
            raise UsageError(f"--batch-sizes must be positive integers, not {self.batch_sizes!r}")
        return sizes

    @property
    def origins(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


def build_parser(prog: str = "python -m serve") -> argparse.ArgumentParser:
    """The argparse parser: one option per ``Settings`` field (``resnet.dataclass_cli``), each naming its
    environment variable."""
    p = UsageParser(
        prog=prog,
        description="Serve 10-crop ResNet classification over HTTP (POST /classify, /healthz, /readyz, /metrics, "
        "/docs). Every option can also be set by the environment variable named in its help.",
    )
    add_options(p, Settings, env_prefix=ENV_PREFIX)
    return p


def settings_from(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``argv`` (flags) over ``environ`` (``RESNET_SERVE_*``) over the defaults."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    settings = Settings(**values_from(Settings, args, environ, ENV_PREFIX))
    if not settings.model and not settings.model_repository:
        raise UsageError(
            "no model given: pass --model PATH or --model-repository DIR (or set RESNET_SERVE_MODEL or "
            "RESNET_SERVE_MODEL_REPOSITORY)"
        )
    return settings


def settings_table() -> str:
    """A Markdown table of every setting (flag, environment variable, default, meaning), as in docs/serving.md."""
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        if f.name == "web_dir":
            default = "`clients/web` of this checkout"
        else:
            default = f"`{f.default}`" if f.default != "" else "(none)"
        meaning = f.metadata["help"].replace("|", "\\|")
        rows.append(f"| `{flag(f.name)}` | `{env_name(ENV_PREFIX, f.name)}` | {default} | {meaning} |")
    return "\n".join(rows)
