#!/usr/bin/env bash
# The main job end to end on bundled real data (scikit-learn's handwritten digits):
# train -> evaluate -> export (ONNX, FP16, TensorRT when present, each gated) -> INT8 (gated) -> serve -> classify over HTTP.
# Every step is a `python -m` command a user can run by hand; outputs go to $DEMO_OUT (default demo_out/).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_out}
PORT=${DEMO_PORT:-8000}
RUN="$OUT/run"
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "1/7 the paper's networks, measured against Tables 1 and 6"
$PY -m resnet.summary --cifar-depths 20 56 110

step "2/7 train a ResNet-20 on the digits with the paper's CIFAR recipe, shortened ($RUN)"
$PY -m train.cifar --dataset digits --depth 20 --out "$RUN" --progress lines --log-every 100

step "3/7 evaluate it on the held-out digits: centre crop, ten-crop and the paper's multi-scale test side by side"
$PY -m train.evaluate "$RUN/model.pt" --dataset digits --crops all

step "4/7 export: FP32 ONNX -> FP16 graph -> TensorRT engine, each behind a parity gate"
$PY -m export.trt "$RUN/model.pt"

step "5/7 INT8: ONNX Runtime static quantization calibrated on training digits, gated on the held-out ones"
$PY -m export.quantize "$RUN/model.pt" --calib digits
$PY -m export.compare "$RUN/model.onnx" "$RUN/model.int8.onnx" --images digits

step "6/7 serve the exported model on 127.0.0.1:$PORT"
$PY -c "from resnet.samples import write_digits_imagefolder as w; w('$OUT/heldout', 'test')"
$PY -m serve --model "$RUN/model.onnx" --port "$PORT" --log-level warning &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT

step "7/7 classify all held-out digits over HTTP and score them; then two with the command-line client, and one with the multi-scale test"
$PY -m clients.smoke "$OUT/heldout" --url "http://127.0.0.1:$PORT" --wait 180 --min-accuracy 0.9
$PY -m clients.classify "$OUT/heldout/3/$(ls "$OUT/heldout/3" | head -1)" "$OUT/heldout/8/$(ls "$OUT/heldout/8" | head -1)" \
  --url "http://127.0.0.1:$PORT" --topk 3
$PY -m clients.classify "$OUT/heldout/8/$(ls "$OUT/heldout/8" | head -1)" --url "http://127.0.0.1:$PORT" --topk 3 \
  --crops multiscale
kill -TERM $SERVER && wait $SERVER || true
trap - EXIT
echo
echo "Run the server yourself with:  $PY -m serve --model $RUN/model.onnx"
echo "then:  curl -F file=@$OUT/heldout/7/$(ls "$OUT/heldout/7" | head -1) localhost:8000/classify"
