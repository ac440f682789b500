"""What the TensorRT execution provider of ONNX Runtime needs besides its options: an engine-cache folder per
ONNX Runtime, TensorRT, GPU and profile, a progress line while it builds engines, and where it placed the graph."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("resnet.runtime")

PROGRESS_EVERY_S = 30.0
WHOLE = "[TensorRT EP] Whole graph will run on TensorRT"
PARTITIONED = "[TensorRT EP] Graph is partitioned and number of subgraphs running on TensorRT"
NONE = "[TensorRT EP] No graph will run on TensorRT"


def engine_cache_key(profile: str) -> str:
    """The TensorRT EP cache sub-folder: ONNX Runtime, TensorRT, the GPU and the profile. ONNX Runtime's TensorRT
    EP docs ("trt_engine_cache_enable"): engines must be rebuilt when the model, ORT, TensorRT or the GPU change;
    the EP keys its files by model and profile only, so one folder per combination keeps stale engines unread."""
    import onnxruntime as ort

    from .tensorrt import installed_tensorrt

    parts = [f"ort{ort.__version__}", f"trt{installed_tensorrt() or 'none'}", gpu_name(), profile]
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", "_".join(parts))[:200]


@functools.cache
def gpu_name() -> str:
    """GPU 0's name from ``nvidia-smi`` (no CUDA library needed), or ``unknown-gpu``."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown-gpu"
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown-gpu"


def placement(messages: list[str]) -> str:
    """How the TensorRT EP placed the graph, from its log lines (tensorrt_execution_provider.cc, GetCapability:
    "Whole graph will run on TensorRT", "Graph is partitioned and number of subgraphs ... is N", "No graph will
    run on TensorRT"): ``whole``, ``partial: N subgraphs on TensorRT, the rest on the CUDA EP``, ``none`` or
    ``unknown`` (no such line). A partial or empty placement is logged as a warning."""
    said = "unknown"
    for m in messages:
        if WHOLE in m:
            said = "whole"
        elif PARTITIONED in m:
            count = re.search(r"(\d+)\s*$", m.strip())
            said = f"partial: {count.group(1) if count else '?'} subgraphs on TensorRT, the rest on the CUDA EP"
        elif NONE in m:
            said = "none: every node on the CUDA EP"
    if said.startswith(("partial", "none")):
        log.warning("TensorRT EP placement %s", said)
    return said


@contextlib.contextmanager
def build_progress(path: Path, trt: Any, every: float = PROGRESS_EVERY_S) -> Iterator[None]:
    """Log one line when a TensorRT EP session starts (engines build for minutes unless cached) and one every
    ``every`` seconds until it is made, so a first start is not minutes of silence."""
    cache = getattr(trt, "cache_dir", None)
    log.info(
        "TensorRT EP: building or loading engines for %s (minutes on a first start; cache %s)",
        path.name,
        cache or "off",
    )
    done = threading.Event()
    start = time.monotonic()

    def tick() -> None:
        while not done.wait(every):
            log.info("TensorRT EP: still building engines for %s: %.0f s so far", path.name, time.monotonic() - start)

    thread = threading.Thread(target=tick, name="trt-build-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        log.info("TensorRT EP: session for %s ready after %.1f s", path.name, time.monotonic() - start)
