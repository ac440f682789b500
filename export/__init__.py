"""Export stage: checkpoint -> FP32 ONNX -> FP16 ONNX -> TensorRT engine, each admitted by an accuracy-parity gate.

Commands: ``python -m export.onnx``, ``python -m export.parity``, ``python -m export.trt`` (the whole chain).
"""
