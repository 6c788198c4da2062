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


def graph_ms(fn, repeat):
    """Median ms of fn replayed from a CUDA graph (None when capture fails)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
            fn()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        return cuda_ms(g.replay, repeat)
    except Exception as e:  # report, never abort the section
        print("graph capture failed:", repr(e)[:200], file=sys.stderr)
        return None


def sync_free(lp, lt, kw):
    """True when step(validate=False) with device-tensor arguments makes no synchronising call."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(lp, lt, "kl_symmetry", validate=False, **kw)
        return True
    except RuntimeError as e:
        print("sync in step:", repr(e)[:300], file=sys.stderr)
        return False
    finally:
        torch.cuda.set_sync_debug_mode("default")


def step_timings(batches, vocabs, repeat, deadline):
    """Fused step vs a device copy of both rows; rows past the deadline are skipped (listed)."""
    rows, skipped = [], []
    for V in vocabs:
        for B in batches:
            if time.time() > deadline:
                skipped.append(dict(B=B, V=V))
                continue
            lp, lt = (x.cuda().bfloat16() for x in lm_like(B, V, seed=2))
            dev = dict(device="cuda")
            plain = dict(keys=torch.arange(B, **dev), positions=torch.zeros(B, dtype=torch.long, **dev),
                         seed=torch.zeros(B, dtype=torch.long, **dev), temperature=torch.ones(B, **dev),
                         top_k=torch.zeros(B, dtype=torch.long, **dev), top_p=torch.ones(B, **dev),
                         min_p=torch.zeros(B, **dev), alpha=torch.full((B,), 0.5, **dev))
            trunc = dict(plain, temperature=torch.full((B,), 0.8, **dev), top_k=torch.full((B,), 50, **dev),
                         top_p=torch.full((B,), 0.9, **dev))
            src = torch.stack([lp, lt])
            dst = torch.empty_like(src)
            copy_ms = cuda_ms(lambda: dst.copy_(src), repeat)
            read_bytes = 2 * B * V * lp.element_size()
            row = dict(B=B, V=V, copy_ms=copy_ms, copy_GBps=2 * read_bytes / copy_ms / 1e6)  # read + write
            for method in ("fixed", "kl_symmetry"):
                for name, kw in (("plain", plain), ("topkp", trunc)):
                    fn = lambda m=method, kw=kw: step(lp, lt, m, validate=False, **kw)  # noqa: E731
                    out = fn()
                    passes = out.passes.float()
                    ms = cuda_ms(fn, repeat)
                    gms = graph_ms(fn, repeat)
                    best = min(ms, gms) if gms else ms
                    tag = f"{method}_{name}"
                    row[f"{tag}_ms"], row[f"{tag}_graph_ms"] = ms, gms
                    row[f"{tag}_passes_mean"], row[f"{tag}_passes_max"] = float(passes.mean()), int(passes.max())
                    # bandwidth per full pass (reads only) as a share of the copy's read+write rate
                    row[f"{tag}_pass_pct_of_copy"] = 100 * float(passes.mean()) * read_bytes / best / 1e6 / row["copy_GBps"]
            row["sync_free"] = sync_free(lp, lt, trunc)
            rows.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
            print("step:", json.dumps(rows[-1]), flush=True)
    return rows, skipped


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
    ap.add_argument("--budget", type=float, default=200, help="seconds this section may take (the shell "
                    "script's timeout is a little above)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    corr = correctness()
    print("correctness:", json.dumps(corr), flush=True)
    # the fused step first (the figures), then the older mix/sample table if time is left
    step_rows, step_skipped = step_timings([1, 8, 64, 256], [32000, 152064], 10 if args.quick else 20,
                                           deadline=t0 + args.budget * 0.6)
    batches = [1, 8, 64] if args.quick else [1, 8, 64, 128]
    rows = []
    if time.time() < t0 + args.budget * 0.7:
        rows = timings(batches[:2] if time.time() > t0 + args.budget * 0.4 else batches, [32000, 151936],
                       10 if args.quick else 20)
    report = dict(bench="gpu_check_kernels", device=torch.cuda.get_device_name(), torch=torch.__version__,
                  correctness=corr, step_rows=step_rows, step_skipped=step_skipped, rows=rows,
                  seconds=round(time.time() - t0, 1))
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    scols = ["B", "V", "copy_GBps", "fixed_plain_ms", "kl_symmetry_plain_ms", "kl_symmetry_plain_graph_ms",
             "kl_symmetry_plain_passes_max", "kl_symmetry_plain_pass_pct_of_copy", "kl_symmetry_topkp_ms",
             "kl_symmetry_topkp_passes_max", "kl_symmetry_topkp_pass_pct_of_copy", "sync_free"]
    print(" ".join(f"{c.replace('kl_symmetry', 'kl')[:16]:>16}" for c in scols))
    for r in step_rows:
        print(" ".join(f"{str(r.get(c)):>16}" for c in scols))
    cols = ["B", "V", "triton_fixed_ms", "triton_kl_symmetry_ms", "triton_ess_balance_ms",
            "triton_sample_ms", "torch_kl_ms", "naive_ms", "copy_ms", "kl_symmetry_pct_of_copy", "kl_over_fixed",
            "step_kl_ms", "step_controls_ms", "controls_over_kl"]
    print(" ".join(f"{c.replace('triton_', 't_')[:14]:>14}" for c in cols))
    for r in rows:
        print(" ".join(f"{r[c]:>14}" for c in cols))
    step_ok = all(r["sync_free"] for r in step_rows)
    ok = (all(v["ok"] for k, v in corr.items() if k in METHODS) and all(corr["sample_same_tokens"].values())
          and corr["controls"]["same_tokens"] and corr["controls"]["same_forced"] and corr["controls"]["alpha"] <= 1e-5
          and step_ok)
    print(json.dumps(dict(bench="gpu_check_kernels", correct=ok, step_rows=step_rows, step_skipped=step_skipped,
                          rows=rows)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
