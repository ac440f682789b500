#!/usr/bin/env bash
# The one prepared GPU check, for a task that is lent a device machine (15 minutes in all): prints a short table of
# what ran and what it measured; copy the figures into bench/RESULTS.md with the card's name.
#
# The device image has torch + torchvision + onnxruntime (CPU) + scikit-learn/-image but no TensorRT and no FastAPI,
# so this checks the CUDA training paths (AMP, channels_last, cudnn.benchmark) and CUDA-vs-CPU agreement; the
# TensorRT engine path (tests/test_export_trt.py, `python -m export.trt model.pt --require-engine`) needs a machine
# with the tensorrt package. Not yet run: no task so far was lent a device.
#
#   device run:  bash bench/device_check.sh        (about 5 minutes on an H100/H200)
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
status=()
check() {  # check NAME COMMAND...: run, keep its log, remember pass/fail
  local name=$1; shift
  local t0=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then status+=("| $name | ok | $((SECONDS - t0)) s |")
  else status+=("| $name | FAILED (exit $?) | $((SECONDS - t0)) s |"); fi
  tail -n 12 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

check unit_tests $PY -m pytest -q -p no:cacheprovider tests/test_models.py tests/test_preprocess.py tests/test_checkpoint.py
check train_step_resnet50 $PY bench/train_throughput.py --synthetic --model resnet50 --image-size 224 --batch-size 128 \
  --device cuda --iters 10 --warmup 3
check train_step_cifar20 $PY bench/train_throughput.py --synthetic --model cifar_resnet20 --batch-size 128 \
  --device cuda --iters 20 --warmup 5
check digits_cuda_amp $PY -m train.cifar --dataset digits --depth 20 --device cuda --out "$OUT/digits" \
  --progress lines --log-every 100 --no-tensorboard
check evaluate_cuda $PY -m train.evaluate "$OUT/digits/model.pt" --dataset digits --device cuda

echo
echo "| check | result | time |"
echo "|---|---|---:|"
printf '%s\n' "${status[@]}"
