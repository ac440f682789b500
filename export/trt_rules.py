"""TensorRT's ONNX rules for a Q/DQ (explicitly quantized) graph, checked on the CPU before any engine build.

TensorRT's ONNX parser takes QuantizeLinear/DequantizeLinear only as INT8 (or FP8/INT4), symmetric, with constant
scales, and refuses the rest after it has loaded the graph (so a build fails minutes in). The rules, from
onnx-tensorrt ``docs/operators.md`` (QuantizeLinear: ``y_zero_point`` must be 0; DequantizeLinear: types INT8, FP8,
INT4, ``x_zero_point`` must be zero; "UINT8 is only supported as network input or output tensor types") and its
importer ``onnxOpImporters.cpp`` (``QuantDequantLinearHelper``: UINT8 inputs refused, zero points must be all zeros,
"Dynamic shape for scale tensor is not supported"), ONNX-TensorRT 10.1 GA:

- every Q/DQ is an ONNX-domain node (ONNX Runtime's ``com.microsoft`` contrib Q/DQ are not TensorRT ops);
- every QuantizeLinear produces INT8: its zero point is INT8 (an absent zero point means UINT8 in ONNX);
- every DequantizeLinear reads INT8: never UINT8 (asymmetric activations) nor INT32 (a quantized bias);
- every zero point is a constant of zeros, every scale a constant;
- the graph holds Q/DQ pairs at all (an "INT8" graph without them would build as floating point).

``check_graph(proto)`` returns the reasons (empty: the graph keeps the rules); ``require_trt_ready`` raises
``TrtRulesError`` (exit 1) with the first reason on one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnet import UserError

ONNX_DOMAINS = ("", "ai.onnx")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class TrtRulesError(UserError):
    """An INT8 graph breaks TensorRT's ONNX rules for Q/DQ nodes (refused before building)."""


def _constants(graph: Any) -> dict[str, Any]:
    """Initializers and Constant-node outputs, by tensor name (as ``onnx.TensorProto``)."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ONNX_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = attr.t
    return found


def _elem_types(graph: Any, constants: dict[str, Any]) -> dict[str, int]:
    """Element type of every tensor we can tell without running shape inference."""
    import onnx

    types = {name: t.data_type for name, t in constants.items()}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.HasField("tensor_type"):
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for node in graph.node:  # a QuantizeLinear's output has its zero point's type (UINT8 when there is none)
        if node.op_type == "QuantizeLinear" and node.domain in ONNX_DOMAINS:
            zp = node.input[2] if len(node.input) > 2 and node.input[2] else ""
            out = types.get(zp, onnx.TensorProto.UINT8) if zp else onnx.TensorProto.UINT8
            for attr in node.attribute:
                if attr.name == "output_dtype" and attr.i:
                    out = attr.i
            types[node.output[0]] = out
    return types


def _type_name(elem: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem)


def check_graph(proto: Any) -> list[str]:
    """Every way ``proto`` (an ``onnx.ModelProto``) breaks TensorRT's Q/DQ rules, one short reason each."""
    import onnx
    from onnx import numpy_helper

    graph = proto.graph
    constants = _constants(graph)
    types = _elem_types(graph, constants)
    reasons: list[str] = []
    qdq = [n for n in graph.node if n.op_type in QDQ_OPS]
    if not qdq:
        return ["no QuantizeLinear/DequantizeLinear nodes: not an explicitly quantized graph"]
    for node in qdq:
        name = node.name or node.output[0]
        if node.domain not in ONNX_DOMAINS:
            reasons.append(f"{node.op_type} {name} is in domain {node.domain!r}, not ONNX's")
            continue
        if node.op_type == "QuantizeLinear":
            out = types.get(node.output[0])
            if out != onnx.TensorProto.INT8:
                reasons.append(f"QuantizeLinear {name} produces {_type_name(out or 0)}, not INT8")
        else:
            src = types.get(node.input[0])
            if src is None:
                reasons.append(f"DequantizeLinear {name}: the type of its input {node.input[0]} is unknown")
            elif src != onnx.TensorProto.INT8:
                what = " (a quantized bias)" if src == onnx.TensorProto.INT32 else ""
                reasons.append(f"DequantizeLinear {name} reads {_type_name(src)}{what}, not INT8")
        scale = node.input[1] if len(node.input) > 1 else ""
        if scale not in constants:
            reasons.append(f"{node.op_type} {name}: scale {scale or '(none)'} is not a constant")
        zp = node.input[2] if len(node.input) > 2 else ""
        if zp:
            if zp not in constants:
                reasons.append(f"{node.op_type} {name}: zero point {zp} is not a constant")
            elif numpy_helper.to_array(constants[zp]).any():
                reasons.append(f"{node.op_type} {name}: zero point is not 0 (asymmetric quantization)")
    return reasons


def summary(reasons: list[str]) -> str:
    """The first reason and how many more, for one line."""
    more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
    return f"{reasons[0]}{more}"


def require_trt_ready(proto: Any, what: str) -> None:
    """Raise ``TrtRulesError`` (one line) when ``proto`` breaks TensorRT's Q/DQ rules."""
    reasons = check_graph(proto)
    if reasons:
        raise TrtRulesError(f"{what} breaks TensorRT's ONNX rules for INT8: {summary(reasons)}")


def require_trt_ready_file(path: Path) -> None:
    """``require_trt_ready`` for a graph on disk; an unreadable file is a one-line ``TrtRulesError`` too."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a truncated or foreign file
        raise TrtRulesError(f"{path.name}: not a readable ONNX file ({type(e).__name__})") from None
    require_trt_ready(proto, path.name)
