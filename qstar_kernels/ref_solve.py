"""Reference solvers for alpha (the weight on pi_theta), batched over rows.

kl_symmetry and ess_balance are solved on the *common support* S = {pi_theta > 0, pi_t > 0},
with both distributions renormalised on S (identical to the plain problem when the supports
agree). With d = lt_S - lp_S:

    g(a) = E_{q_a}[d] = KL(q||pi_theta) - KL(q||pi_t),  g' = -Var_q(d) <= 0,  g(0) >= 0 >= g(1)
    h(a) = log Z(2-a) - log Z(-a) = log(ESS_t / ESS_theta),  h' = E_{2-a}[d] - E_{-a}[d] <= 0

Both are solved by Newton steps kept inside a bisection bracket (a bisection step whenever the
derivative is ~0 or the Newton point leaves the bracket). The CPU reference loops until every
row converged (cap MAX_ITERS); `iters` counts the passes over the vocab per row.
Not for: statistics of q (ref_mix.py) or GPU speed (triton_mix.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")
MAX_ITERS = 32
# Stop when |g| <= TOL * (1 + KL); fp32 sums of V terms carry ~1e-7 relative noise.
TOL = {torch.float32: 1e-5, torch.float64: 1e-9}
# Tokens whose max(lp, lt) is PRUNE nats below L = max_y min(lp_y, lt_y) move Z(a) by a relative
# amount < V * exp(-PRUNE) for every a in [0, 1] (since a*lp + (1-a)*lt lies between them).
PRUNE = 40.0
KL_ZERO = {torch.float32: 64 * 2.0**-23, torch.float64: 64 * 2.0**-52}


@dataclass
class Support:
    """The common support and both log-probs renormalised on it."""

    mask: torch.Tensor   # (B, V) bool
    any: torch.Tensor    # (B,) bool, S non-empty
    d: torch.Tensor      # (B, V) lt_S - lp_S on S, 0 elsewhere
    base: torch.Tensor   # (B, V) lt_S on S, -inf elsewhere: mixture logit is base - a*d

    @staticmethod
    def build(lp: torch.Tensor, lt: torch.Tensor) -> "Support":
        mask = (lp > NEG_INF) & (lt > NEG_INF)
        lp_s = torch.where(mask, lp, NEG_INF)
        lt_s = torch.where(mask, lt, NEG_INF)
        any_ = mask.any(-1)
        lp_s = lp_s - torch.where(any_, torch.logsumexp(lp_s, -1), 0)[:, None]
        lt_s = lt_s - torch.where(any_, torch.logsumexp(lt_s, -1), 0)[:, None]
        d = torch.where(mask, lt_s - torch.where(mask, lp_s, 0), 0)
        return Support(mask=mask, any=any_, d=d, base=lt_s)


def _moments(base, d, b, k: int):
    """log Z(b) and E_b[d^j] (j < k) of w ∝ exp(base - b*d), one pass: (B,), [(B,)]*k."""
    x = torch.addcmul(base, b[:, None], d, value=-1)
    m = x.amax(-1, keepdim=True)
    m = torch.where(m > NEG_INF, m, 0)
    w = (x - m).exp_()
    cols = [torch.ones_like(d), d, d * d][:k]
    s = torch.bmm(w[:, None, :], torch.stack(cols, -1)).squeeze(1)  # (B, k)
    z = s[:, 0]
    return m.squeeze(-1) + z.log(), [s[:, j] / z for j in range(1, k)]


def _prune(sup: Support, lp, lt):
    """Compact (base, d) to the tokens that can matter for a in [0, 1]; None if not worth it."""
    B, V = sup.d.shape
    if B * V < 65536:
        return None
    lo = torch.where(sup.mask, torch.minimum(lp, lt), NEG_INF).amax(-1, keepdim=True)
    keep = sup.mask & (torch.maximum(lp, lt) >= lo - PRUNE)
    k = int(keep.sum(-1).max())
    if k > V // 2:
        return None
    rows, cols = keep.nonzero(as_tuple=True)
    pos = keep.cumsum(-1)[rows, cols] - 1
    base = torch.full((B, k), NEG_INF, dtype=lp.dtype, device=lp.device)
    d = torch.zeros((B, k), dtype=lp.dtype, device=lp.device)
    base[rows, pos] = sup.base[rows, cols]
    d[rows, pos] = sup.d[rows, cols]
    return base, d


def _newton(evaluate, skip, dtype):
    """Safeguarded Newton on a decreasing f with f(0) >= 0 >= f(1), rows in `skip` untouched.

    evaluate(a) -> (f, fprime, scale); converged when |f| <= TOL * (1 + scale)."""
    a = torch.full(skip.shape, 0.5, dtype=dtype, device=skip.device)
    lo, hi = torch.zeros_like(a), torch.ones_like(a)
    done = skip.clone()
    iters = torch.zeros(skip.shape, dtype=torch.int32, device=skip.device)
    eps = torch.finfo(dtype).eps
    for it in range(MAX_ITERS):
        f, fp, scale = evaluate(a)
        iters += (~done).int()
        conv = (f.abs() <= TOL[dtype] * (1 + scale)) | (hi - lo <= 2 * eps * hi) | (it + 1 == MAX_ITERS)
        lo = torch.where(f > 0, a, lo)
        hi = torch.where(f < 0, a, hi)
        cand = a - f / torch.where(fp < 0, fp, -1)
        ok = (fp < -1e-300) & (cand > lo) & (cand < hi) & torch.isfinite(cand)
        step = torch.where(ok, cand, 0.5 * (lo + hi))
        a = torch.where(done | conv, a, step)
        done = done | conv
        if bool(done.all()):
            break
    return a, iters


def solve_kl_symmetry(lp, lt, sup: Support):
    pruned = _prune(sup, lp, lt)
    base, d = pruned if pruned is not None else (sup.base, sup.d)

    def evaluate(a):
        log_z, (g, g2) = _moments(base, d, a, 3)
        var = (g2 - g * g).clamp_min(0)
        return g, -var, (-log_z).clamp_min(0)  # at the root both KLs equal -log Z(a)

    return _newton(evaluate, ~sup.any, lp.dtype)


def solve_ess_balance(lp, lt, sup: Support):
    # No pruning: exponents 2-a and -a leave [0, 1], where tiny-probability tokens can dominate.
    def evaluate(a):
        lz2, (e2,) = _moments(sup.base, sup.d, 2 - a, 2)
        lzm, (em,) = _moments(sup.base, sup.d, -a, 2)
        return lz2 - lzm, e2 - em, torch.maximum(lz2.abs(), lzm.abs())

    return _newton(evaluate, ~sup.any, lp.dtype)


def _ratio_or_half(num, den, zero=0.0):
    """num / (num + den) with 0.5 when both are <= zero and the finite limit when one is inf."""
    num_inf, den_inf = torch.isinf(num), torch.isinf(den)
    tot = num + den
    a = torch.where(tot > zero, num / torch.where(tot > 0, tot, 1), 0.5)
    a = torch.where(num_inf & ~den_inf, 1.0, a)
    a = torch.where(den_inf & ~num_inf, 0.0, a)
    return torch.where(num_inf & den_inf, 0.5, a)


def kl_pair(lp, lt):
    """KL(pi_theta || pi_t), KL(pi_t || pi_theta): (B,), (B,)."""
    p, t = lp.exp(), lt.exp()
    k_pt = (p * torch.where(p > 0, lp - lt, 0)).sum(-1)
    k_tp = (t * torch.where(t > 0, lt - lp, 0)).sum(-1)
    return k_pt.clamp_min(0), k_tp.clamp_min(0)  # KL >= 0; sums of +-terms round below it


def solve(method, lp, lt, sup: Support, alpha, h_theta, h_t):
    """Unclamped alpha (B,) and passes over the vocab (B,) int32 for `method`."""
    B = lp.shape[0]
    ones = torch.ones(B, dtype=torch.int32, device=lp.device)
    if method == "fixed":
        return alpha, ones * 0
    if method == "entropy":
        return _ratio_or_half(h_theta, h_t), ones
    if method == "reverse_kl_symmetry":
        # KLs at rounding level mean identical distributions to working precision: a = 0.5
        return _ratio_or_half(*kl_pair(lp, lt), zero=KL_ZERO[lp.dtype]), ones
    if method == "kl_symmetry":
        return solve_kl_symmetry(lp, lt, sup)
    return solve_ess_balance(lp, lt, sup)


def residual(method, a, sup: Support):
    """Defining-equation residual at a: |g|/(1+KL) (kl_symmetry), |h| (ess_balance), else 0."""
    zeros = torch.zeros_like(a)
    if method == "kl_symmetry":
        log_z, (g,) = _moments(sup.base, sup.d, a, 2)
        return torch.where(sup.any, g.abs() / (1 + (-log_z).clamp_min(0)), zeros)
    if method == "ess_balance":
        lz2, _ = _moments(sup.base, sup.d, 2 - a, 1)
        lzm, _ = _moments(sup.base, sup.d, -a, 1)
        return torch.where(sup.any, (lz2 - lzm).abs(), zeros)
    return zeros
