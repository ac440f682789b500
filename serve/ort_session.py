"""Moved to ``resnet.runtime.ort`` (the one owner of ONNX Runtime sessions); these names stay importable from here."""

from resnet.runtime.ort import (  # noqa: F401
    AUTO_ORDER,
    PROVIDERS,
    ProviderUnavailable,
    TrtOptions,
    conflicting_runtimes,
    cpu_threads,
    make_session,
    onnx_session_card,
    peek_onnx,
    rss_mib,
    session_options,
    trt_cache_dir,
)
