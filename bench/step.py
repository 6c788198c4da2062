"""CPU timings of one decode `step` (mix + sample + gathers): reference (torch) vs fused C (cpu).

    python -m bench.step [--batch 1 8] [--vocab 49152 151936] [--threads 1] [--repeat 7]
    python -m bench.step --controls [...]   # cost of the mixture controls on the fused C step

Methods fixed / kl_symmetry / ess_balance, two logit regimes: "uniform" (a random tiny model:
randn * 0.05, every token within a few nats of the max, so the Gumbel race touches the whole
vocabulary) and "lm" (bench.kernels.lm_like, LM-scale correlated logits). Prints a table, then
one JSON line (ratios measured in this run, nothing hard-coded).
"""
from __future__ import annotations

import argparse

import torch

from bench.kernels import lm_like, timed
from bench.table import report
from qstar_kernels import step

METHODS = ("fixed", "kl_symmetry", "ess_balance")
BACKENDS = ("torch", "cpu")


def logits(regime, B, V, seed=0):
    if regime == "uniform":
        g = torch.Generator().manual_seed(seed)
        return torch.randn(B, V, generator=g) * 0.05, torch.randn(B, V, generator=g) * 0.05
    return lm_like(B, V, seed)


def run(batches, vocabs, regimes, repeat):
    rows = []
    for regime in regimes:
        for V in vocabs:
            for B in batches:
                lp, lt = logits(regime, B, V)
                kw = dict(keys=torch.arange(B), positions=torch.full((B,), 3), seed=1,
                          validate=False)
                row = dict(regime=regime, B=B, V=V)
                for be in BACKENDS:
                    for m in METHODS:
                        ms, out = timed(lambda: step(lp, lt, m, backend=be, **kw), repeat)
                        row[f"{be}_{m}_ms"] = round(ms, 3)
                        if m == "kl_symmetry":
                            row[f"{be}_kl_iters_max"] = int(out.iters.max())
                    kl, fixed = row[f"{be}_kl_symmetry_ms"], row[f"{be}_fixed_ms"]
                    row[f"{be}_kl_over_fixed"] = round(kl / fixed, 3)
                    row[f"{be}_kl_minus_fixed_ms"] = round(kl - fixed, 3)
                row["speedup_fixed"] = round(row["torch_fixed_ms"] / row["cpu_fixed_ms"], 2)
                row["speedup_kl"] = round(row["torch_kl_symmetry_ms"] / row["cpu_kl_symmetry_ms"], 2)
                rows.append(row)
    return rows


CONTROLS = ("plain", "support_k50", "support_p95", "force_1row", "all")


def controls_kwargs(B, V) -> dict[str, dict]:
    """The step keywords of each CONTROLS entry for a (B, V) batch."""
    force = torch.zeros(B, dtype=torch.bool)
    force[0] = True  # force_teacher "first": one row of the batch starts its response
    special = torch.zeros(V, dtype=torch.bool)
    special[:8] = True
    return {"plain": {}, "support_k50": dict(support_top_k=50), "support_p95": dict(support_top_p=0.95),
            "force_1row": dict(force=force),
            "all": dict(support_top_k=50, support_top_p=0.95, force=force, force_tokens=special)}


def run_controls(batches, vocabs, regimes, repeat, backend="cpu"):
    """kl_symmetry step with each control on vs off (ratios to plain measured side by side)."""
    rows = []
    for regime in regimes:
        for V in vocabs:
            for B in batches:
                lp, lt = logits(regime, B, V)
                row = dict(regime=regime, B=B, V=V, backend=backend)
                for name, ctl in controls_kwargs(B, V).items():
                    ms, _ = timed(lambda: step(lp, lt, "kl_symmetry", backend=backend, keys=torch.arange(B),
                                               positions=3, seed=1, validate=False, **ctl), repeat)
                    row[f"{name}_ms"] = round(ms, 3)
                for name in CONTROLS[1:]:
                    row[f"{name}_over_plain"] = round(row[f"{name}_ms"] / row["plain_ms"], 2)
                rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 151936])
    ap.add_argument("--regime", nargs="+", default=["uniform", "lm"], choices=["uniform", "lm"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads (the C kernel uses as many)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--controls", action="store_true", help="time the mixture controls (support, forcing) "
                    "on the fused C step instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.controls:
        rows = run_controls(args.batch, args.vocab, args.regime, args.repeat)
        cols = ["regime", "B", "V"] + [f"{n}_ms" for n in CONTROLS] + [f"{n}_over_plain" for n in CONTROLS[1:]]
        report("step_controls_cpu", rows, cols, threads=args.threads)
        return
    rows = run(args.batch, args.vocab, args.regime, args.repeat)
    cols = ["regime", "B", "V"] + [f"{be}_{m}_ms" for be in BACKENDS for m in METHODS] + [
        "torch_kl_over_fixed", "cpu_kl_over_fixed", "cpu_kl_minus_fixed_ms", "cpu_kl_iters_max",
        "speedup_fixed", "speedup_kl"]
    short = {c: c.replace("_symmetry", "").replace("_balance", "").replace("_ms", "") for c in cols}
    report("step_cpu", rows, cols, headers=short, threads=args.threads)


if __name__ == "__main__":
    main()
