#!/usr/bin/env bash
# Issue 27's GPU serving benchmark in one go (bench/gpu_bench.py): the in-process ceiling first, then naive, ours
# fp16 (1 worker, the default workers, twice that, and 1 worker with host preprocessing as the A/B of the GPU-side
# crops), ours auto; c=1 and c=64; GPU utilisation; then tests/test_device_preprocess.py, test_device_feed.py and
# test_feed_check.py (on CUDA when torch sees it). Writes gpu_bench.json, gpu_bench.log and device_tests.log into $OUT and prints the
# table and the tests' summary last. About 7 minutes on an H200; the bench is stopped at 8 (each row is printed as it
# ends, so a stopped run keeps them), the tests at 100 s.
#
#   device run:      OUT=$OUT WHEELS=shared/wheels bash bench/gpu_bench.sh
#   CPU rehearsal:   GPU_BENCH_ARGS="--device cpu --arch cifar_resnet20 --max-batch 20 --c64-requests 64" \
#                    bash bench/gpu_bench.sh
#
# The wheel folder, made on a machine with network for the device's Python (check it there first:
# python3 -c 'import sys; print(sys.version_info[:2])'; the H200 image of 2026-11 has Python 3.12 on x86-64 Linux,
# with httpx, prometheus-client, uvloop and Pillow already installed):
#
#   pip download --only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_17_x86_64 --implementation cp --abi cp312 -d shared/wheels \
#       fastapi starlette uvicorn httptools pydantic python-multipart
#
# gpu_bench.py installs only what the device lacks: pip install --no-index --find-links $WHEELS --target
# $OUT/site, then PYTHONPATH (no network).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_bench}
mkdir -p "$OUT"
LOG="$OUT/gpu_bench.log"
WHEEL_ARGS=()
if [ -n "${WHEELS:-}" ]; then WHEEL_ARGS=(--wheels "$WHEELS"); fi
TESTS="$OUT/device_tests.log"
# shellcheck disable=SC2086  # GPU_BENCH_ARGS is a list of flags
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available"
  timeout 480 "$PY" -m bench.gpu_bench --work "$OUT/work" --out "$OUT/gpu_bench.json" "${WHEEL_ARGS[@]}" \
    ${GPU_BENCH_ARGS:-}
  echo "gpu_bench.py exit $?"
} >"$LOG" 2>&1
rc=$(tail -n 1 "$LOG" | awk '{print $NF}')
# Then the device-side preprocessing and the device feed against the CPU path, on this GPU where there is one (the
# tests take "cuda" when torch sees it), with the serving packages gpu_bench installed into $OUT/work/site.
PYTHONPATH="$OUT/work/site${PYTHONPATH:+:$PYTHONPATH}" timeout 100 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_device_preprocess.py tests/test_device_feed.py tests/test_feed_check.py >"$TESTS" 2>&1
tests_rc=$?
tail -n 20 "$LOG"
echo "device feed tests (exit $tests_rc): $(tail -n 1 "$TESTS")"
if [ "${rc:-1}" != 0 ]; then exit "${rc:-1}"; fi
exit "$tests_rc"
