#!/usr/bin/env bash
# GPU check of issue 14: bf16 encoding and a bf16 training step on one GPU, as a fraction of the GPU's measured
# bf16 matmul peak, and the vectors against CPU fp32. At most 8 minutes. Needs the project installed with a CUDA
# build of torch (the README's install step, without the CPU-wheel pin) and ../shared/data/scifact.
#     bash bench/gpu.sh                          (PYTHON=/path/to/venv/bin/python bash bench/gpu.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
timeout 480 "${PYTHON:-python}" bench/bench_gpu.py "$@"
