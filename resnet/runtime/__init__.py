"""Running an artifact, for the export gate and the server alike (docs/DESIGN.md §2 names it the owner).

- ``resnet.runtime.kinds``: the ``Runtime`` and ``Precision`` vocabularies and ``Combination`` (runtime + provider
  + precision), ``graph_precision``.
- ``resnet.runtime.crops``: the crop protocols (ten / center / multiscale: views and how they are combined).
- ``resnet.runtime.ort``: ONNX Runtime sessions on a verified execution provider (CPU, CUDA, TensorRT EP).
- ``resnet.runtime.tensorrt``: TensorRT engines (``*.plan``) run from Python.
- ``resnet.runtime.runner``: the ``Runner`` type and the ONNX Runtime / TensorRT runners.
- ``resnet.runtime.report``: the typed parity report and which report admits which combination.

Importing this package imports neither torch, onnxruntime nor tensorrt; the modules that need them import them
when a runner is made.
"""

from .crops import CROP_NAMES, CROP_PROTOCOLS, CropName, CropProtocol, crop_protocol
from .kinds import PRECISIONS, RUNTIMES, TORCH_PRECISIONS, Combination, Precision, Runtime

__all__ = [
    "CROP_NAMES",
    "CROP_PROTOCOLS",
    "PRECISIONS",
    "RUNTIMES",
    "TORCH_PRECISIONS",
    "Combination",
    "CropName",
    "CropProtocol",
    "Precision",
    "Runtime",
    "crop_protocol",
]
