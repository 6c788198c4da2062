"""Side-by-side CPU timings of `mix` per method vs the seed's naive bisection, in one run.

    python -m bench.kernels [--batch 1 8 64] [--vocab 32000 151936] [--threads 1] [--repeat 5]

Prints a table, then one JSON line (ratios measured in this run, nothing hard-coded).
"""
from __future__ import annotations

import argparse
import json
import statistics as st
import time

import torch

from bench.naive import naive_kl_bisection
from qstar_kernels import mix

METHODS = ("fixed", "entropy", "kl_symmetry", "ess_balance", "reverse_kl_symmetry")


def lm_like(B, V, seed=0):
    """Correlated policy/teacher logits of LM scale (|logit| <= 20)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, V, generator=g) * 4
    return ((base + torch.randn(B, V, generator=g) * 1.2).clamp(-20, 20),
            (base + torch.randn(B, V, generator=g) * 1.2).clamp(-20, 20))


def timed(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return st.median(times) * 1e3, out


def run(batches, vocabs, repeat):
    rows = []
    for V in vocabs:
        for B in batches:
            lp, lt = lm_like(B, V)
            res = {m: timed(lambda m=m: mix(lp, lt, m, backend="torch", validate=False), repeat)
                   for m in METHODS}
            naive_ms, _ = timed(lambda: naive_kl_bisection(lp, lt), repeat)
            row = dict(B=B, V=V, naive_ms=round(naive_ms, 2))
            for m, (ms, out) in res.items():
                row[f"{m}_ms"] = round(ms, 2)
                row[f"{m}_iters_max"] = int(out.iters.max())
            row["kl_over_fixed"] = round(res["kl_symmetry"][0] / res["fixed"][0], 3)
            row["naive_over_kl"] = round(naive_ms / res["kl_symmetry"][0], 3)
            rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--vocab", type=int, nargs="+", default=[32000, 151936])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1 can beat 2 under load)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args.batch, args.vocab, args.repeat)
    cols = ["B", "V"] + [f"{m}_ms" for m in METHODS] + ["naive_ms", "kl_iters", "kl/fixed", "naive/kl"]
    print(" ".join(f"{c:>12}" for c in cols))
    for r in rows:
        vals = [r["B"], r["V"]] + [r[f"{m}_ms"] for m in METHODS] + [
            r["naive_ms"], r["kl_symmetry_iters_max"], r["kl_over_fixed"], r["naive_over_kl"]]
        print(" ".join(f"{v:>12}" for v in vals))
    print(json.dumps(dict(bench="kernels_cpu", threads=args.threads, rows=rows)))


if __name__ == "__main__":
    main()
