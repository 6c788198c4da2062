#!/usr/bin/env bash
# GPU check: run from the checkout on a CUDA machine (no network, installs nothing): at most
# 10 + 30 + 200 + 190 + 130 = 560 s by the timeouts below, under the 10-minute limit of one device command.
#   OUT=/path/for/details bash bench/gpu_check.sh [--quick]
# Kernels (<= 200 s): Triton vs reference on CUDA, the fused step vs a device copy at B 1/8/64/256,
# V 32000/152064, bf16, with pass counts, then mix/sample timings if time is left. Engine (<= 190 s):
# correctness on a small fp32 pair, then a random ~1B bf16 pair at batch 1/32/128 vs HF generate.
# Self-check (<= 130 s): `qstar check` of a tiny pair with every mixture control on, fp32 and bf16,
# then fp32 with --speculative 4 (draft t) and with --cross-tokenizer (a second in-code tokenizer).
# Each section prints a table, then JSON; the last line is always this script's own JSON summary.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OUT="${OUT:-$PWD/gpu-check-out}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$OUT/triton-cache}"
unset TRITON_INTERPRET
mkdir -p "$OUT"
timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 30 python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" || true
section() {  # name seconds command...: run time-boxed, tee the log, echo the exit status
    local name=$1 secs=$2
    shift 2
    timeout "$secs" "$@" 2>&1 | tee "$OUT/$name.log" >&2
    echo "${PIPESTATUS[0]}"
}
k=$(section gpu_check 200 python -m bench.gpu_check --out "$OUT" --budget 170 "$@")
e=$(section gpu_engine 190 python -m bench.gpu_engine --out "$OUT")
s=$(section gpu_selfcheck 130 python -m bench.gpu_selfcheck --out "$OUT")
rc=0
for x in "$k" "$e" "$s"; do [ "$x" = 0 ] || rc=1; done
echo "{\"bench\": \"gpu_check\", \"kernels_rc\": $k, \"engine_rc\": $e, \"selfcheck_rc\": $s, \"seconds\": $SECONDS, \"ok\": $([ $rc = 0 ] && echo true || echo false)}"
exit $rc
