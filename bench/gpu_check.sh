#!/usr/bin/env bash
# GPU check: run from the checkout on a CUDA machine (no network, installs nothing), < 10 min.
#   OUT=/path/for/details bash bench/gpu_check.sh [--quick]
# Kernels: Triton vs reference on CUDA, then timings. Engine: correctness on a small fp32 pair,
# then a random ~1B bf16 pair at batch 1/32/128 vs HF generate. Self-check: `qstar check` of a
# tiny pair with every mixture control on, fp32 and bf16. Each prints a table, then JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OUT="${OUT:-$PWD/gpu-check-out}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$OUT/triton-cache}"
unset TRITON_INTERPRET
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
rc=0
timeout 300 python -m bench.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log" || rc=1
timeout 240 python -m bench.gpu_engine --out "$OUT" 2>&1 | tee "$OUT/gpu_engine.log" || rc=1
timeout 120 python -m bench.gpu_selfcheck --out "$OUT" 2>&1 | tee "$OUT/gpu_selfcheck.log" || rc=1
exit $rc
