"""The TensorRT timing cache around an engine build (export/engine.py), on the CPU.

TensorRT cannot run here, so ``TimingCacheConfig`` stands in for the three ``tensorrt.IBuilderConfig`` calls the code
makes, with the behaviour TensorRT's documentation gives them (Python API ``IBuilderConfig``/``ITimingCache``;
"Optimizing Builder Performance", TensorRT 10.16): ``create_timing_cache(bytes)`` makes a cache (empty for ``b""``),
``set_timing_cache(cache, ignore_mismatch=False)`` returns False for a cache made on another device or TensorRT
version, and the cache that was set is the one to ``serialize()`` after the build. What a real build does with it is
covered by tests/test_export_trt.py on a machine with TensorRT."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.engine import attach_timing_cache, save_timing_cache

HERE = b"timing-cache:this-gpu:"


class TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.serialized = 0

    def serialize(self) -> bytes:
        self.serialized += 1
        return self.data + b"+tactics"


class TimingCacheConfig:
    """The documented timing-cache contract of ``tensorrt.IBuilderConfig`` (see the module docstring)."""

    def __init__(self, refuse_all: bool = False) -> None:
        self.refuse_all = refuse_all
        self.made: list[TimingCache] = []
        self.set: TimingCache | None = None

    def create_timing_cache(self, data: bytes) -> TimingCache:
        cache = TimingCache(data or HERE)
        self.made.append(cache)
        return cache

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False  # a cache from another GPU must never be applied
        if self.refuse_all or not cache.data.startswith(HERE):
            return False
        self.set = cache
        return True


def test_no_cache_file_starts_a_new_cache_and_saves_it(tmp_path: Path) -> None:
    path = tmp_path / "model.timing.cache"
    config = TimingCacheConfig()
    cache, reused = attach_timing_cache(config, path, "10.16.1")
    assert cache is config.set and not reused
    save_timing_cache(cache, path)
    assert path.read_bytes() == HERE + b"+tactics"


def test_a_cache_from_this_gpu_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "model.timing.cache"
    path.write_bytes(HERE + b"earlier")
    config = TimingCacheConfig()
    cache, reused = attach_timing_cache(config, path, "10.16.1")
    assert reused and cache is config.set and cache.data == HERE + b"earlier"


def test_a_cache_from_another_gpu_is_not_applied_warned_and_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.timing.cache"
    path.write_bytes(b"timing-cache:another-gpu:")
    config = TimingCacheConfig()
    cache, reused = attach_timing_cache(config, path, "10.16.1")
    assert not reused and cache is config.set and cache.data == HERE  # a new, empty one was set instead
    out = capsys.readouterr().out
    assert "warning: timing cache" in out and "does not apply here" in out and "building without it" in out
    foreign = config.made[0]
    save_timing_cache(cache, path)
    assert foreign.serialized == 0 and path.read_bytes() == HERE + b"+tactics"


def test_when_tensorrt_refuses_every_cache_the_build_runs_without_one_and_nothing_is_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.timing.cache"
    path.write_bytes(b"timing-cache:another-gpu:")
    config = TimingCacheConfig(refuse_all=True)
    cache, reused = attach_timing_cache(config, path, "11.4.0")
    assert (cache, reused) == (None, False)
    save_timing_cache(cache, path)
    assert path.read_bytes() == b"timing-cache:another-gpu:"  # untouched
    assert all(c.serialized == 0 for c in config.made)  # never serialize a cache that was not set
    assert "refused a new timing cache: building without one" in capsys.readouterr().out
