#!/usr/bin/env bash
# Issue 27's GPU serving benchmark in one go (bench/gpu_bench.py): the in-process ceiling first, then naive, ours
# fp16 (1 worker, the default workers, twice that, and 1 worker with host preprocessing as the A/B of the GPU-side
# crops), ours auto; c=1 and c=64; GPU utilisation; then tests/test_device_preprocess.py, test_device_feed.py and
# test_feed_check.py (on CUDA when torch sees it). Writes gpu_bench.json, gpu_bench.log, device_tests.log and
# server_logs.tgz into $OUT and prints the table and the tests' summary last. About 7 minutes on an H200; the bench
# is stopped at 8 (each row is printed as it ends, so a stopped run keeps them), the tests at 100 s.
#
#   device run:      OUT=$OUT WHEELS=.whl bash bench/gpu_bench.sh      (the device tool's run, carry [".whl"])
#   CPU rehearsal:   GPU_BENCH_ARGS="--device cpu --arch cifar_resnet20 --max-batch 20 --c64-requests 64" \
#                    bash bench/gpu_bench.sh
#
# The wheel folder, made here (with network) for the device's Python (the H200 image of 2026-11: Python 3.12 on
# x86-64 Linux, with pytest, httpx, prometheus-client, uvloop, Pillow, scikit-image and scikit-learn installed;
# the device README's KINDS.md lists them), 4 MB, kept out of git:
#
#   echo /.whl/ >> .git/info/exclude
#   pip download --only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_17_x86_64 --implementation cp --abi cp312 -d .whl \
#       fastapi starlette uvicorn httptools pydantic python-multipart
#
# (checked here: those wheels install with --no-index --target into Python 3.12 and import.)
# gpu_bench.py installs only what the device lacks: pip install --no-index --find-links $WHEELS --target
# $WORK/site, then PYTHONPATH (no network). The checkpoint, the installed packages and the servers' logs stay in
# $WORK (outside $OUT: the device tool brings back at most 8 files of 16 MiB); $OUT gets the JSON, the two logs and
# server_logs.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_bench}
WORK=${WORK:-/tmp/gpu_bench_work}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_bench.log"
WHEEL_ARGS=()
if [ -n "${WHEELS:-}" ]; then WHEEL_ARGS=(--wheels "$WHEELS"); fi
TESTS="$OUT/device_tests.log"
# shellcheck disable=SC2086  # GPU_BENCH_ARGS is a list of flags
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available"
  timeout 480 "$PY" -m bench.gpu_bench --work "$WORK" --out "$OUT/gpu_bench.json" "${WHEEL_ARGS[@]}" \
    ${GPU_BENCH_ARGS:-}
  echo "gpu_bench.py exit $?"
} >"$LOG" 2>&1
rc=$(tail -n 1 "$LOG" | awk '{print $NF}')
# Then the device-side preprocessing and the device feed against the CPU path, on this GPU where there is one (the
# tests take "cuda" when torch sees it), with the serving packages gpu_bench installed into $WORK/site.
(cd "$WORK" && tar -czf "$OUT/server_logs.tgz" -- *.log 2>/dev/null)
PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" timeout 100 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_device_preprocess.py tests/test_device_feed.py tests/test_feed_check.py >"$TESTS" 2>&1
tests_rc=$?
tail -n 20 "$LOG"
echo "device feed tests (exit $tests_rc): $(tail -n 1 "$TESTS")"
if [ "${rc:-1}" != 0 ]; then exit "${rc:-1}"; fi
exit "$tests_rc"
