"""The FP16 graph (``*.fp16.onnx``): FP16 weights and activations inside, float32 ``input``/``logits`` outside.

Made from the FP32 graph by onnxconverter-common's ``float16.convert_float_to_float16`` with ``keep_io_types=True``
(Cast nodes at the edges). Numerically sensitive ops stay in FP32 through the converter's ``op_block_list``: its
defaults plus the reductions and normalisations (global average pool, softmax, norms, exp/log) where FP16
accumulation loses the most. TensorRT 11 builds a strongly typed engine straight from this graph; ONNX Runtime runs
it on the CPU, so the FP16 gate runs on every machine.
"""

from __future__ import annotations

import warnings
from typing import Any

from resnet.card import ModelCard

from .log import log
from .onnx import ExportError, seal

# Kept in FP32: accumulations over many values and the exponentials (added to the converter's default list).
SENSITIVE_OPS = (
    "GlobalAveragePool",
    "ReduceMean",
    "ReduceSum",
    "ReduceL2",
    "Softmax",
    "LogSoftmax",
    "BatchNormalization",
    "LayerNormalization",
    "InstanceNormalization",
    "Exp",
    "Log",
    "Pow",
    "Sqrt",
)


def block_list() -> list[str]:
    """The ops the converter leaves in FP32."""
    from onnxconverter_common import float16

    return sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(SENSITIVE_OPS))


def convert_fp16(fp32: Any, card: ModelCard) -> Any:
    """FP32 ``onnx.ModelProto`` -> FP16 ModelProto with float32 I/O, the card kept, ``onnx.checker`` clean."""
    import onnx
    from onnxconverter_common import float16

    source = onnx.ModelProto()
    source.CopyFrom(fp32)  # the converter edits its argument in place
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            proto = float16.convert_float_to_float16(
                source,
                keep_io_types=True,
                op_block_list=block_list(),
                disable_shape_infer=False,
                check_fp16_ready=True,
            )
    except Exception as e:  # the converter raises plain exceptions for graphs it cannot handle
        raise ExportError(f"FP16 conversion failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    clamped = sum("truncated" in str(w.message) for w in caught)
    if clamped:
        log(f"note: FP16 conversion clamped {clamped} weight value(s) outside FP16's range (|x| < 1e-7 or > 1e4)")
    seal(
        proto,
        card.replace(precision="fp16"),
        "resnet-stack export.fp16",
        f"onnxconverter-common float16, blocked: {','.join(SENSITIVE_OPS)}",
        "the FP16 graph",
    )
    return proto
