"""The vocabularies of running an artifact: which runtime runs it, in which precision, on which provider.

One definition each (docs/DESIGN.md §2): ``Runtime`` (what runs an artifact; the artifact kinds
``checkpoint|onnx|engine`` stay ``resnet.artifacts.ArtifactKind``), ``Precision`` (the model card's ``precision``,
``serve --precision``), and ``Combination``: the runtime + provider + precision a parity
report ran and a server serves. No imports beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, get_args

Runtime = Literal["onnxruntime", "tensorrt", "torch"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)

Precision = Literal["fp32", "fp16", "int8", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# What PyTorch autocast can compute in (serve --precision for a checkpoint): fp32 is no autocast.
TORCH_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


class ServePrecision(str, Enum):
    """``serve --precision``: ``auto`` (a folder: the fastest artifact whose gate passed; a file: what it computes
    in, fp32 for a checkpoint) or one of ``PRECISIONS``."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    BF16 = "bf16"


# ONNX Runtime execution providers by their short names (``--backend`` / ``export.parity --ep``).
EP_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
CPU_PROVIDER = EP_PROVIDERS["cpu"]
ENGINE_PROVIDER = "TensorRT"  # a .plan engine runs on TensorRT itself, not through ONNX Runtime
GPU_PROVIDERS = (EP_PROVIDERS["tensorrt"], EP_PROVIDERS["cuda"], ENGINE_PROVIDER)  # and torch's "torch:cuda[:N]"

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Combination:
    """What computes a model's logits: a runtime, its provider (as the runtime names it) and a precision."""

    runtime: Runtime
    provider: (
        str  # "CPUExecutionProvider", "TensorrtExecutionProvider", "CUDAExecutionProvider", "TensorRT", "torch:cuda"
    )
    precision: Precision

    @property
    def on_gpu(self) -> bool:
        """Only providers known to run on a GPU count (``GPU_PROVIDERS``): a provider this table does not know,
        e.g. a new CPU-only runtime, is not a GPU."""
        return self.provider in GPU_PROVIDERS or self.provider.startswith("torch:cuda")

    @property
    def needs_report(self) -> bool:
        """Whether serving it needs its own passing parity report: all but the CPU combinations that served before
        reports existed (ONNX Runtime's CPU EP, PyTorch on the CPU); a provider not known here needs one."""
        return self.provider not in (CPU_PROVIDER, "torch:cpu")

    @property
    def slug(self) -> str:
        """A file-name part: ``ort-tensorrt-fp16``, ``ort-cuda-fp32``, ``tensorrt-int8``."""
        if self.runtime == "onnxruntime":
            short = next((k for k, v in EP_PROVIDERS.items() if v == self.provider), self.provider.lower())
            return f"ort-{short}-{self.precision}"
        return f"{self.runtime}-{self.provider.replace(':', '-').lower()}-{self.precision}"

    def describe(self) -> str:
        return f"{self.runtime} on {self.provider} in {self.precision}"

    def as_dict(self) -> dict[str, str]:
        return {"runtime": self.runtime, "provider": self.provider, "precision": self.precision}


# Which providers an INT8 graph is offered to, by the layout it was quantized for (its card's calibration target,
# ``export.quantize --target``). The CPU layout's uint8 activations and int32-bias DequantizeLinear are what TensorRT's
# parser rejects, and the CUDA EP has no int32 DequantizeLinear kernel; the TensorRT layout is slower than FP32 in
# ONNX Runtime on the CPU and is built for TensorRT (onnx-tensorrt docs/operators.md; export/trt_rules.py).
INT8_PROVIDERS = {"cpu": ("cpu",), "tensorrt": ("tensorrt",)}


def int8_target(card: Any) -> str:
    """The layout an INT8 graph's card says it was quantized for: ``cpu`` (also graphs from before the target was
    recorded) or ``tensorrt``."""
    calibration = (getattr(card, "provenance", None) or {}).get("calibration") or {}
    return "tensorrt" if calibration.get("target") == "tensorrt" else "cpu"


def not_offered(ep: str, card: Any) -> str:
    """Empty when a graph with ``card`` may be offered to ONNX Runtime's ``ep``, else why not (one clause)."""
    if getattr(card, "precision", None) != "int8":
        return ""
    target = int8_target(card)
    if ep in INT8_PROVIDERS[target]:
        return ""
    if target == "cpu":
        return (
            "the CPU-layout INT8 graph (uint8 activations, int32 biases) runs on the CPU only; for TensorRT quantize "
            "with --target tensorrt (model.int8.trt.onnx)"
        )
    return "the TensorRT-layout INT8 graph runs on the TensorRT EP or as a .plan only"


def ep_combinations(ep: str, card_precision: str, target: str = "cpu") -> list[tuple[Combination, bool]]:
    """The combinations an ONNX Runtime execution provider may run a graph in, fastest first, each with whether the
    TensorRT EP is told ``trt_fp16_enable``: an FP32 graph on the TensorRT EP in FP16, then FP32; otherwise the
    graph's own precision; none for an INT8 graph of another layout (``target``, ``INT8_PROVIDERS``). The gate runs
    each (``export.gate.gate_gpu_providers``), the server serves the first one a passing report admits
    (``serve.engine.backends``)."""
    provider = EP_PROVIDERS[ep]
    if card_precision == "int8" and ep not in INT8_PROVIDERS.get(target, ()):
        return []
    if ep == "tensorrt" and card_precision == "fp32":
        return [
            (Combination("onnxruntime", provider, "fp16"), True),
            (Combination("onnxruntime", provider, "fp32"), False),
        ]
    own = ort_precision(card_precision)
    return [(Combination("onnxruntime", provider, own), ep == "tensorrt" and own == "fp16")]


def check_precision(value: Any, what: str = "precision") -> Precision:
    """``value`` when it is one of ``PRECISIONS``, else ``ValueError`` naming them."""
    if value not in PRECISIONS:
        raise ValueError(f"unknown {what} {value!r} (known: {', '.join(PRECISIONS)})")
    return value  # type: ignore[no-any-return]


def check_runtime(value: Any) -> Runtime:
    if value not in RUNTIMES:
        raise ValueError(f"unknown runtime {value!r} (known: {', '.join(RUNTIMES)})")
    return value  # type: ignore[no-any-return]


def graph_precision(proto: Any) -> Precision:
    """What an ONNX graph computes in, from its nodes and weights: ``int8`` with Q/DQ nodes, ``fp16`` with FP16
    weights, else ``fp32``. The one place a graph's precision is inferred (its card says the same for our exports)."""
    import onnx

    if any(node.op_type in QDQ_OPS for node in proto.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        return "fp16"
    return "fp32"


def ort_precision(card_precision: str, trt_fp16: bool = False) -> Precision:
    """What an ONNX Runtime session of a graph computes in: a reduced-precision graph's own (its card's int8 or
    fp16, whichever provider runs it), else fp16 when the TensorRT EP is told ``trt_fp16_enable``, else fp32."""
    if card_precision in ("int8", "fp16"):
        return card_precision  # type: ignore[return-value]
    return "fp16" if trt_fp16 else "fp32"
