#!/usr/bin/env bash
# The GPU benchmark, sized for a few minutes of a lent GPU machine: full-size SD1.5 random weights
# in the layouts users download, fp16, 512x512, 16 frames, 4 steps, lcmvideo against a plain
# diffusers script with its defaults (whole processes, alternating). Prints seconds per clip and
# peak VRAM side by side. Run from the repository root, with lcmvideo installed:
#   bash benchmarks/gpu.sh [OUTDIR]
set -euo pipefail
out=${1:-${OUT:-/tmp}}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())"
python benchmarks/full_size.py --device cuda --dtype float16 --size 512 --frames 16 --steps 4 --reps 2 \
    --work /tmp/lcmvideo-full-size 2>&1 | tee "$out/gpu-benchmark.txt"
