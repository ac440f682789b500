"""TensorRT's ONNX rules for INT8 graphs, checked on the CPU: the TensorRT-ready graph keeps them, the CPU-tuned one
(and the way ``export.trt --int8`` used to quantize) breaks them, and nothing breaking them reaches a build."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import resnet
from export import calib, engine, quantize, trt, trt_rules
from export.onnx import export_model
from resnet.onnx_card import read_onnx_card


@pytest.fixture(scope="module")
def graphs(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits model quantized for each target (20 calibration digits), written as files."""
    folder = tmp_path_factory.mktemp("trt_rules")
    model, card = resnet.load_checkpoint(digits_checkpoint)
    calibration, _ = calib.prepare("digits", card, 20, None, 20)
    fp32, _ = export_model(model, card)
    out = {}
    for target in quantize.TARGETS:
        proto, _ = quantize.quantize_graph(fp32, card, calibration, "minmax", target)
        out[target] = folder / f"{target}.onnx"
        onnx.save(proto, str(out[target]))
    return out


def test_tensorrt_graph_keeps_the_rules_with_float_biases_and_qdq_on_weighted_inputs(graphs: dict[str, Path]) -> None:
    proto = onnx.load(str(graphs["tensorrt"]))
    assert trt_rules.check_graph(proto) == []
    produced_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    floats = {t.name for t in proto.graph.initializer if t.data_type == TensorProto.FLOAT}
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert [produced_by.get(i) for i in node.input[:2]] == ["DequantizeLinear"] * 2, node.name
            assert node.input[2] in floats, f"{node.name}: bias should stay float"
        if node.op_type == "Add":  # residual Add: fused into the Conv before it; the skip input keeps its Q/DQ
            assert sorted(produced_by.get(i) for i in node.input) == ["Conv", "DequantizeLinear"], node.name
        if node.op_type in ("Conv", "Gemm", "Add"):  # no Q/DQ on the outputs of the fused ops
            consumers = [n.op_type for n in proto.graph.node if node.output[0] in n.input]
            assert "QuantizeLinear" not in consumers, node.name


def test_cpu_graph_breaks_the_rules_and_says_how(graphs: dict[str, Path]) -> None:
    reasons = trt_rules.check_graph(onnx.load(str(graphs["cpu"])))
    text = "\n".join(reasons)
    assert "reads INT32 (a quantized bias), not INT8" in text
    assert "produces UINT8, not INT8" in text and "reads UINT8" in text
    assert "zero point is not 0 (asymmetric quantization)" in text


def _one_qdq(zero_point: np.ndarray | None, domain: str = "", scale_is_input: bool = False) -> onnx.ModelProto:
    """input -> QuantizeLinear -> DequantizeLinear -> Relu, with the given zero point."""
    inits = [] if scale_is_input else [numpy_helper.from_array(np.array(0.1, np.float32), "s")]
    q_in = ["x", "s"]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(zero_point, "zp"))
        q_in.append("zp")
    nodes = [
        helper.make_node("QuantizeLinear", q_in, ["q"], name="q", domain=domain),
        helper.make_node("DequantizeLinear", ["q", *q_in[1:]], ["dq"], name="dq", domain=domain),
        helper.make_node("Relu", ["dq"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    if scale_is_input:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    graph.initializer.extend(inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    "model, words",
    [
        (_one_qdq(np.array(0, np.int8)), None),
        (_one_qdq(np.array(3, np.int8)), "zero point is not 0"),
        (_one_qdq(np.array(128, np.uint8)), "produces UINT8"),
        (_one_qdq(None), "produces UINT8"),  # ONNX: no zero point means uint8
        (_one_qdq(np.array(0, np.int8), domain="com.microsoft"), "domain 'com.microsoft'"),
        (_one_qdq(np.array(0, np.int8), scale_is_input=True), "scale s is not a constant"),
    ],
    ids=["symmetric-int8", "nonzero-zero-point", "uint8", "no-zero-point", "contrib-domain", "dynamic-scale"],
)
def test_each_rule_on_a_hand_made_graph(model: onnx.ModelProto, words: str | None) -> None:
    reasons = trt_rules.check_graph(model)
    if words is None:
        assert reasons == []
    else:
        assert reasons and any(words in r for r in reasons), reasons


def test_a_graph_without_qdq_is_not_an_int8_graph() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    assert "no QuantizeLinear/DequantizeLinear" in trt_rules.check_graph(helper.make_model(graph))[0]


def test_engine_build_refuses_a_rule_breaking_graph_before_tensorrt(graphs: dict[str, Path], tmp_path: Path) -> None:
    """Refused in one line by the rules, not minutes later by TensorRT's parser (and without TensorRT here)."""
    profiles = engine.engine_profiles(read_onnx_card(graphs["cpu"]), 12)
    with pytest.raises(trt_rules.TrtRulesError) as exc:
        engine.build_engine(
            tmp_path / "unused.onnx",
            tmp_path / "unused.fp16.onnx",
            profiles,
            tmp_path / "t.cache",
            int8_onnx=graphs["cpu"],
        )
    message = str(exc.value)
    assert len(message.splitlines()) == 1 and "cpu.onnx breaks TensorRT's ONNX rules for INT8" in message
    assert exc.value.exit_code == 1 and not (tmp_path / "t.cache").exists()


def test_export_trt_int8_refuses_the_old_quantization_before_writing_it(
    digits_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``export.trt --int8`` quantized with int8 activations but ONNX Runtime's default int32 biases: refused, exit 1,
    one line with the reason, and no INT8 graph (nor report) left behind."""
    old = quantize.Target("tensorrt", "int8", True, None, ())
    monkeypatch.setitem(quantize.TARGETS, "tensorrt", old)
    shutil.copy(digits_checkpoint, tmp_path / "model.pt")
    argv = [str(tmp_path / "model.pt"), "--int8", "--calib", "digits", "--calib-count", "10", "--limit", "20"]
    with contextlib.redirect_stdout(io.StringIO()):
        rc = resnet.run_cli(trt.main, [*argv, "--max-batch", "12"], prog="export.trt")
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "breaks TensorRT's ONNX rules for INT8" in err and "INT32 (a quantized bias)" in err
    assert not [p for p in tmp_path.iterdir() if ".int8" in p.name], sorted(p.name for p in tmp_path.iterdir())
