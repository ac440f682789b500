"""Moved to ``resnet.runtime.tensorrt`` (the one owner of running TensorRT engines); these names stay importable
from here."""

from .runtime.tensorrt import (  # noqa: F401
    MIN_TENSORRT_MAJOR,
    TensorRTRunner,
    choose_profile,
    describe_profiles,
    engine_host,
    installed_tensorrt,
    open_engine,
    same_release,
    spatial_range,
    tensorrt_available,
    tensorrt_version,
)
