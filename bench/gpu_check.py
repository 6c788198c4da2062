"""GPU check for qstar_kernels: correctness on CUDA first, then timings; table, then one JSON line.

    PYTHONPATH=. python -m bench.gpu_check [--out DIR] [--quick]

Correctness: Triton `mix` (every method) and `sample` against the PyTorch reference on the same
CUDA tensors (and fp64 on CPU for alpha). Timings (CUDA events, median): Triton mix per method,
Triton sample, the PyTorch reference on GPU, the seed's naive 20-step bisection, and a device
copy of the bytes the kernel must read (the roofline). Installs nothing; no network.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics as st
import sys
import time

import torch

from bench.kernels import lm_like
from bench.naive import naive_kl_bisection
from qstar_kernels import METHODS, mix, sample, step


def cuda_ms(fn, repeat=20):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return st.median(times)


def correctness(B=8, V=151936):
    lp, lt = lm_like(B, V, seed=1)
    lp[0, :100] = float("-inf")
    lt[1, -50:] = float("-inf")
    out = {}
    for m in METHODS:
        tri = mix(lp.cuda(), lt.cuda(), m, backend="triton")
        ref = mix(lp.cuda(), lt.cuda(), m, backend="torch")
        r64 = mix(lp.double(), lt.double(), m, backend="torch")
        fin = torch.isfinite(ref.logq)
        errs = dict(alpha=(tri.alpha - ref.alpha).abs().max().item(),
                    alpha_vs_fp64=(tri.alpha.double().cpu() - r64.alpha).abs().max().item(),
                    logq=(tri.logq[fin] - ref.logq[fin]).abs().max().item(),
                    kl_theta=(tri.kl_theta - ref.kl_theta).abs().max().item(),
                    ess_theta=(tri.ess_theta - ref.ess_theta).abs().max().item(),
                    iters_max=int(tri.iters.max()),
                    sym_gap=((tri.kl_theta - tri.kl_t).abs() / (1 + tri.kl_theta)).max().item()
                    if m == "kl_symmetry" else 0.0)
        errs["ok"] = errs["alpha"] <= 1e-5 and errs["logq"] <= 1e-4
        out[m] = errs
    logq = mix(lp.cuda(), lt.cuda(), "kl_symmetry").logq
    same = {}
    for kw in (dict(), dict(temperature=0.7, top_k=50), dict(top_p=0.9), dict(min_p=0.05, top_p=0.95)):
        args = dict(keys=torch.arange(B, device="cuda") * 31, positions=torch.arange(B, device="cuda"), seed=3, **kw)
        a = sample(logq, backend="triton", **args)
        b = sample(logq, backend="torch", **args)
        same[json.dumps(kw)] = bool(torch.equal(a.tokens, b.tokens))
    out["sample_same_tokens"] = same
    # mixture controls (support restriction + forced rows) on the fused step: Triton = reference
    special = torch.zeros(V, dtype=torch.bool, device="cuda")
    special[:16] = True
    kw = dict(keys=torch.arange(B, device="cuda") * 7, positions=torch.arange(B, device="cuda"), seed=5,
              support_top_k=50, support_top_p=0.95, force=torch.arange(B, device="cuda") % 4 == 0,
              force_tokens=special)
    a = step(lp.cuda(), lt.cuda(), "kl_symmetry", backend="triton", **kw)
    b = step(lp.cuda(), lt.cuda(), "kl_symmetry", backend="torch", **kw)
    out["controls"] = dict(same_tokens=bool(torch.equal(a.tokens, b.tokens)),
                           same_forced=bool(torch.equal(a.forced, b.forced)),
                           alpha=(a.alpha - b.alpha).abs().max().item(),
                           logq=(a.logq - b.logq).abs().max().item())
    return out


def timings(batches, vocabs, repeat):
    rows = []
    for V in vocabs:
        for B in batches:
            lp, lt = (x.cuda().bfloat16() for x in lm_like(B, V, seed=2))
            row = dict(B=B, V=V)
            for m in METHODS:
                row[f"triton_{m}_ms"] = cuda_ms(lambda m=m: mix(lp, lt, m, validate=False), repeat)
            logq = mix(lp, lt, "kl_symmetry", validate=False).logq
            keys, pos = torch.arange(B, device="cuda"), torch.zeros(B, dtype=torch.long, device="cuda")
            row["triton_sample_ms"] = cuda_ms(lambda: sample(logq, keys=keys, positions=pos, validate=False), repeat)
            row["triton_sample_topp_ms"] = cuda_ms(lambda: sample(logq, keys=keys, positions=pos, top_p=0.9, validate=False), repeat)
            row["torch_kl_ms"] = cuda_ms(lambda: mix(lp, lt, "kl_symmetry", backend="torch", validate=False), max(3, repeat // 4))
            row["naive_ms"] = cuda_ms(lambda: naive_kl_bisection(lp.float(), lt.float()), max(3, repeat // 4))
            src = torch.cat([lp, lt])
            dst = torch.empty_like(src)
            copy_ms = cuda_ms(lambda: dst.copy_(src), repeat)
            nbytes = 2 * B * V * lp.element_size()
            row["copy_ms"] = copy_ms
            row["copy_GBps"] = nbytes / copy_ms / 1e6
            for m in ("fixed", "kl_symmetry"):
                row[f"{m}_pct_of_copy"] = 100 * copy_ms / row[f"triton_{m}_ms"]
            row["kl_over_fixed"] = row["triton_kl_symmetry_ms"] / row["triton_fixed_ms"]
            force = torch.zeros(B, dtype=torch.bool, device="cuda")
            force[0] = True
            skw = dict(keys=keys, positions=pos, validate=False)
            row["step_kl_ms"] = cuda_ms(lambda: step(lp, lt, "kl_symmetry", **skw), repeat)
            row["step_controls_ms"] = cuda_ms(lambda: step(lp, lt, "kl_symmetry", support_top_k=50, support_top_p=0.95,
                                                           force=force, **skw), repeat)
            row["controls_over_kl"] = row["step_controls_ms"] / row["step_kl_ms"]
            row["naive_over_kl"] = row["naive_ms"] / row["triton_kl_symmetry_ms"]
            rows.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"))
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    corr = correctness()
    print("correctness:", json.dumps(corr), flush=True)
    batches = [1, 8, 64] if args.quick else [1, 8, 64, 128]
    rows = timings(batches, [32000, 151936], 10 if args.quick else 30)
    report = dict(bench="gpu_check_kernels", device=torch.cuda.get_device_name(), torch=torch.__version__,
                  correctness=corr, rows=rows, seconds=round(time.time() - t0, 1))
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    cols = ["B", "V", "triton_fixed_ms", "triton_kl_symmetry_ms", "triton_ess_balance_ms",
            "triton_sample_ms", "torch_kl_ms", "naive_ms", "copy_ms", "kl_symmetry_pct_of_copy", "kl_over_fixed",
            "step_kl_ms", "step_controls_ms", "controls_over_kl"]
    print(" ".join(f"{c.replace('triton_', 't_')[:14]:>14}" for c in cols))
    for r in rows:
        print(" ".join(f"{r[c]:>14}" for c in cols))
    ok = (all(v["ok"] for k, v in corr.items() if k in METHODS) and all(corr["sample_same_tokens"].values())
          and corr["controls"]["same_tokens"] and corr["controls"]["same_forced"] and corr["controls"]["alpha"] <= 1e-5)
    print(json.dumps(dict(bench="gpu_check_kernels", correct=ok, rows=rows)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
