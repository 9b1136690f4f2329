#!/usr/bin/env bash
# The GPU checks of issue 16 as one prepared script, for a lent GPU machine (the device tool):
# installs the pinned environment if missing, then the ensemble on the GPU (bench/gpu.py) and
# the training benchmark on the GPU (bench/train.py). Output goes to stdout and, when $OUT is
# set, to $OUT/gpu.txt. Bounded to about 8 minutes after the install.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
fi
log="${OUT:-/tmp}/gpu.txt"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  timeout 330 .venv/bin/python bench/gpu.py --budget-s 240 || echo "bench/gpu.py ended: $?"
  # fp32 and bf16 autocast, side by side (the training command's two precisions on CUDA)
  timeout 120 .venv/bin/python bench/train.py --device cuda --batch 64 --iters 10 \
    || echo "bench/train.py ended: $?"
} 2>&1 | tee "$log"
