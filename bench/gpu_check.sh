#!/usr/bin/env bash
# GPU check: run from the checkout on a CUDA machine (no network, installs nothing), < 10 min.
#   OUT=/path/for/details bash bench/gpu_check.sh [--quick]
# Correctness of the Triton kernels on CUDA first, then timings; a table, then one JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OUT="${OUT:-$PWD/gpu-check-out}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$OUT/triton-cache}"
unset TRITON_INTERPRET
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 540 python -m bench.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
