#!/usr/bin/env bash
# The main job end to end on bundled data. Each stage is a `python -m` command a user can run by hand.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_out}
mkdir -p "$OUT"

echo "== 1. the paper's networks, measured against Tables 1 and 6"
$PY -m resnet.summary

echo "== 2. build a ResNet-20 (CIFAR family) and save its checkpoint with a model card"
$PY -m resnet.new cifar_resnet20 -o "$OUT/model.pt"
