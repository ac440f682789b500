#!/usr/bin/env bash
# The one prepared GPU check, for a task that is lent a device machine (torch image without TensorRT or FastAPI,
# 10 minutes a command): every step asserts (bench/device_check.py says which thresholds), and it writes exactly two
# files into $OUT: device_check.json (the summary: each step passed, failed or not exercised, with its figures or
# why; "result": passed only when every step ran and passed, else partial or failed, with counts) and
# device_check.log (everything printed). It prints the steps' table last and exits 0 only when no step
# failed; a step that could not run reads "not exercised", never "passed". Copy the figures into bench/RESULTS.md
# with the GPU's name.
#
#   device run:  OUT=$OUT bash bench/device_check.sh        (about 5 minutes on an H100/H200; stopped at 8)
#   CPU rehearsal (no GPU result): DEVICE_CHECK_ARGS="--device cpu --tiny --skip compile" bash bench/device_check.sh
#
# Steps: digits ResNet-20 trained on CUDA reaches >= 97% ten-crop accuracy; CUDA fp32 vs CPU fp32 logits on the
# digits test crops agree on top-1 for 100% of crops with cosine >= 0.9999; bf16 and fp16 autocast agree >= 99%;
# a --compile training run finishes; the training-step table (ResNet-50, 224 px, batch 128: fp32, channels_last,
# channels_last + bf16); export.trt --multiscale builds a gated engine with the multi-scale profile; export.trt --int8
# builds a gated INT8 engine from the TensorRT-ready graph (both not exercised, with why, without the tensorrt
# package, as in the torch image; tests/test_export_trt.py has the other engine tests).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
LOG="$OUT/device_check.log"
# shellcheck disable=SC2086  # DEVICE_CHECK_ARGS is a list of flags
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  timeout 480 "$PY" bench/device_check.py --out "$OUT" ${DEVICE_CHECK_ARGS:-}
  echo "device_check.py exit $?"
} >"$LOG" 2>&1
rc=$(tail -n 1 "$LOG" | awk '{print $NF}')
# the last table device_check.py printed (from "== summary" on) and its exit line; the log's end if it printed none
if grep -q "^== summary$" "$LOG"; then
  awk '/^== summary$/ {buf = ""; on = 1} on {buf = buf $0 "\n"} END {printf "%s", buf}' "$LOG"
else
  tail -n 5 "$LOG"
fi
exit "${rc:-1}"
