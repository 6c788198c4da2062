"""The baseline qstar replaces: the seed's 20-step bisection on alpha, each step a full dense
softmax of the mixture and both KLs (no Newton, no pruning), then the statistics.
Kept only to be timed against; never imported by the product.
"""
from __future__ import annotations

import torch

from qstar_kernels.ref_mix import log_softmax_masked, statistics
from qstar_kernels.ref_solve import Support


def naive_kl_bisection(logits_theta, logits_t, steps: int = 20):
    """alpha (B,) with KL(q||pi_theta) ~= KL(q||pi_t) by plain bisection, plus logq and stats."""
    lp = log_softmax_masked(logits_theta, None)
    lt = log_softmax_masked(logits_t, None)
    lo = torch.zeros(lp.shape[0], dtype=lp.dtype, device=lp.device)
    hi = torch.ones_like(lo)
    for _ in range(steps):
        a = 0.5 * (lo + hi)
        logq = torch.log_softmax(a[:, None] * lp + (1 - a[:, None]) * lt, -1)
        q = logq.exp()
        g = (q * (logq - lp)).sum(-1) - (q * (logq - lt)).sum(-1)
        lo = torch.where(g > 0, a, lo)
        hi = torch.where(g > 0, hi, a)
    a = 0.5 * (lo + hi)
    return statistics(a, lp, lt, Support.build(lp, lt), "kl_symmetry")
