"""Export stage: checkpoint -> FP32 ONNX -> FP16 / INT8 ONNX -> TensorRT engines, each admitted by a parity gate.

Commands: ``python -m export.onnx``, ``python -m export.quantize`` (INT8), ``python -m export.parity``,
``python -m export.trt`` (the whole chain), ``python -m export.compare`` (graphs side by side), ``python -m
export.triton`` (a Triton model repository). The gate is ``export.gate``; its images ``export.images`` (and
``export.calib`` for INT8 calibration); the reference and candidates ``export.candidates``.
"""
