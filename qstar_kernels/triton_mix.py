"""Fused Triton kernel for `mix`: one program per row, one launch per step, no host sync.

Passes over the row (each a loop over BLOCK-wide tiles, fp32, online log-sum-exp per lane):
  1. normalisers of both models, their entropies, KL(pi_theta||pi_t), KL(pi_t||pi_theta), and
     the log-masses of the common support S;
  2. the alpha solve: safeguarded Newton inside a bisection bracket, one pass per iteration,
     in-kernel loop to convergence (cap MAX_ITERS) — same equations as ref_solve.py;
  3. statistics of q at the final alpha; 4. writes logq, logp_theta, logp_t.
Matches the reference to ~1e-5 (tests/test_triton.py). Not for: fp64 (auto-routes to the
reference) or sampling (triton_sample.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .ref_solve import MAX_ITERS, TOL
from .triton_parts import lse_step, mix_logit, stats_init, stats_step
from .types import METHODS, Mixture

NSTAT = 12  # alpha, log_z, kl_theta, kl_t, ess_theta, ess_t, h_theta, h_t, h_q, residual, clamped, iters
NEG = float("-inf")


@triton.jit
def _lanes_lse(m, z):
    """Combine per-lane (max, sum) into a scalar log-sum-exp and the per-lane rescale factors."""
    M = tl.max(m, 0)
    f = tl.where(m > float("-inf"), tl.exp(m - tl.where(M > float("-inf"), M, 0.0)), 0.0)
    return M + tl.log(tl.sum(z * f, 0)), f


@triton.jit
def _load(xp_ptr, xt_ptr, row, cols, V, stride):
    inb = cols < V
    xp = tl.load(xp_ptr + row * stride + cols, mask=inb, other=float("-inf")).to(tl.float32)
    xt = tl.load(xt_ptr + row * stride + cols, mask=inb, other=float("-inf")).to(tl.float32)
    return xp, xt


@triton.jit
def _moments(xp_ptr, xt_ptr, row, V, stride, lse_sp, lse_st, b1, b2,
             TWO: tl.constexpr, BLOCK: tl.constexpr):
    """On S: log Z(b) and E_b[d], E_b[d^2] of w ∝ exp(lt_S - b*d), for b1 (and b2 if TWO)."""
    offs = tl.arange(0, BLOCK)
    m1 = tl.full([BLOCK], float("-inf"), tl.float32)
    z1 = tl.zeros([BLOCK], tl.float32)
    s1 = tl.zeros([BLOCK], tl.float32)
    q1 = tl.zeros([BLOCK], tl.float32)
    m2 = tl.full([BLOCK], float("-inf"), tl.float32)
    z2 = tl.zeros([BLOCK], tl.float32)
    s2 = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        xp, xt = _load(xp_ptr, xt_ptr, row, start + offs, V, stride)
        sup = (xp > float("-inf")) & (xt > float("-inf"))
        lts = tl.where(sup, xt - lse_st, 0.0)
        d = tl.where(sup, lts - tl.where(sup, xp - lse_sp, 0.0), 0.0)
        x1 = tl.where(sup, lts - b1 * d, float("-inf"))
        m1, z1, c1, w1 = lse_step(m1, z1, x1)
        s1 = s1 * c1 + w1 * d
        q1 = q1 * c1 + w1 * d * d
        if TWO:
            x2 = tl.where(sup, lts - b2 * d, float("-inf"))
            m2, z2, c2, w2 = lse_step(m2, z2, x2)
            s2 = s2 * c2 + w2 * d
    lz1, f1 = _lanes_lse(m1, z1)
    z1s = tl.sum(z1 * f1, 0)
    e1 = tl.sum(s1 * f1, 0) / z1s
    v1 = tl.sum(q1 * f1, 0) / z1s - e1 * e1
    lz2 = lz1
    e2 = e1
    if TWO:
        lz2, f2 = _lanes_lse(m2, z2)
        e2 = tl.sum(s2 * f2, 0) / tl.sum(z2 * f2, 0)
    return lz1, e1, v1, lz2, e2


@triton.jit
def _evaluate(xp_ptr, xt_ptr, row, V, stride, lse_sp, lse_st, a,
              METHOD: tl.constexpr, BLOCK: tl.constexpr):
    """f(a), f'(a), scale for the Newton solve: kl_symmetry (METHOD 2) or ess_balance (3)."""
    if METHOD == 2:
        lz, g, var, _lz2, _e2 = _moments(xp_ptr, xt_ptr, row, V, stride, lse_sp, lse_st, a, a,
                                         False, BLOCK)
        return g, -tl.maximum(var, 0.0), tl.maximum(-lz, 0.0)
    else:
        lz2, e2, _v, lzm, em = _moments(xp_ptr, xt_ptr, row, V, stride, lse_sp, lse_st, 2.0 - a,
                                        -a, True, BLOCK)
        return lz2 - lzm, e2 - em, tl.maximum(tl.abs(lz2), tl.abs(lzm))


@triton.jit
def _model_pass(xp_ptr, xt_ptr, row, V, stride, BLOCK: tl.constexpr):
    """Normalisers of both models and log-masses of S (pass A); entropies and both KLs between
    the models as direct sums of p*log p terms (pass B: no lse - E[x] cancellation)."""
    offs = tl.arange(0, BLOCK)
    ninf = tl.full([BLOCK], float("-inf"), tl.float32)
    zero = tl.zeros([BLOCK], tl.float32)
    mp, zp, mt, zt, msp, zsp, mst, zst = ninf, zero, ninf, zero, ninf, zero, ninf, zero
    for start in range(0, V, BLOCK):
        xp, xt = _load(xp_ptr, xt_ptr, row, start + offs, V, stride)
        sup = (xp > float("-inf")) & (xt > float("-inf"))
        mp, zp, _c, _w = lse_step(mp, zp, xp)
        mt, zt, _c, _w = lse_step(mt, zt, xt)
        msp, zsp, _c, _w = lse_step(msp, zsp, tl.where(sup, xp, float("-inf")))
        mst, zst, _c, _w = lse_step(mst, zst, tl.where(sup, xt, float("-inf")))
    lse_p, _f = _lanes_lse(mp, zp)
    lse_t, _f = _lanes_lse(mt, zt)
    lse_sp, _f = _lanes_lse(msp, zsp)
    lse_st, _f = _lanes_lse(mst, zst)
    hp, ht, kpt, ktp = zero, zero, zero, zero
    inf_pt = tl.zeros([BLOCK], tl.int32)
    inf_tp = tl.zeros([BLOCK], tl.int32)
    for start in range(0, V, BLOCK):
        xp, xt = _load(xp_ptr, xt_ptr, row, start + offs, V, stride)
        fp = xp > float("-inf")
        ft = xt > float("-inf")
        lp = tl.where(fp, xp - lse_p, 0.0)
        lt = tl.where(ft, xt - lse_t, 0.0)
        p = tl.where(fp, tl.exp(lp), 0.0)
        t = tl.where(ft, tl.exp(lt), 0.0)
        hp -= p * lp
        ht -= t * lt
        kpt += tl.where(fp & ft, p * (lp - lt), 0.0)
        ktp += tl.where(fp & ft, t * (lt - lp), 0.0)
        inf_pt = inf_pt | (fp & ~ft).to(tl.int32)
        inf_tp = inf_tp | (ft & ~fp).to(tl.int32)
    kl_pt = tl.where(tl.max(inf_pt, 0) > 0, float("inf"), tl.sum(kpt, 0))
    kl_tp = tl.where(tl.max(inf_tp, 0) > 0, float("inf"), tl.sum(ktp, 0))
    return lse_p, lse_t, tl.sum(hp, 0), tl.sum(ht, 0), kl_pt, kl_tp, lse_sp, lse_st


@triton.jit
def _ratio_or_half(num, den, zero):
    tot = num + den
    a = tl.where(tot > zero, num / tl.where(tot > 0, tot, 1.0), 0.5)
    a = tl.where((num == float("inf")) & (den < float("inf")), 1.0, a)
    a = tl.where((den == float("inf")) & (num < float("inf")), 0.0, a)
    return tl.where((num == float("inf")) & (den == float("inf")), 0.5, a)


@triton.jit
def _solve(xp_ptr, xt_ptr, row, V, stride, lse_sp, lse_st, tol, max_iters,
           METHOD: tl.constexpr, BLOCK: tl.constexpr):
    """Safeguarded Newton in a bisection bracket; returns a, passes, and f, scale at that a."""
    a = tl.cast(0.5, tl.float32)
    lo = tl.cast(0.0, tl.float32)
    hi = tl.cast(1.0, tl.float32)
    it = tl.cast(0, tl.int32)
    f = tl.cast(0.0, tl.float32)
    scale = tl.cast(0.0, tl.float32)
    go = tl.cast(lse_sp > float("-inf"), tl.int32)  # rows without common support skip the solve
    while go != 0:
        f, fp, scale = _evaluate(xp_ptr, xt_ptr, row, V, stride, lse_sp, lse_st, a, METHOD, BLOCK)
        it += 1
        stop = (tl.abs(f) <= tol * (1.0 + scale)) | (hi - lo <= 2.4e-7 * hi) | (it >= max_iters)
        lo = tl.where(f > 0, a, lo)
        hi = tl.where(f < 0, a, hi)
        cand = a - f / tl.where(fp < 0, fp, -1.0)
        ok = (fp < -1e-30) & (cand > lo) & (cand < hi)
        a = tl.where(stop, a, tl.where(ok, cand, 0.5 * (lo + hi)))
        go = tl.where(stop, 0, 1)
    return a, it, f, scale


@triton.jit
def _stats_pass(xp_ptr, xt_ptr, row, V, stride, lse_p, lse_t, a, BLOCK: tl.constexpr):
    """log Z, KL(q||pi_theta), KL(q||pi_t), H(q), ESS_theta, ESS_t at a (full support)."""
    offs = tl.arange(0, BLOCK)
    m, z, sxp, sxt, sx, ypm, ypz, ytm, ytz, infp, inft, e0p, e0t = stats_init(BLOCK)
    for start in range(0, V, BLOCK):
        xp, xt = _load(xp_ptr, xt_ptr, row, start + offs, V, stride)
        m, z, sxp, sxt, sx, ypm, ypz, ytm, ytz, infp, inft, e0p, e0t = stats_step(
            m, z, sxp, sxt, sx, ypm, ypz, ytm, ytz, infp, inft, e0p, e0t, xp - lse_p, xt - lse_t, a)
    log_z, f = _lanes_lse(m, z)
    zs = tl.sum(z * f, 0)
    kl_p = tl.where(tl.max(infp, 0) > 0, float("inf"), tl.sum(sxp * f, 0) / zs - log_z)
    kl_t = tl.where(tl.max(inft, 0) > 0, float("inf"), tl.sum(sxt * f, 0) / zs - log_z)
    h_q = log_z - tl.sum(sx * f, 0) / zs
    lyp, _f = _lanes_lse(ypm, ypz)
    lyt, _f = _lanes_lse(ytm, ytz)
    ess_p = tl.where(tl.max(e0p, 0) > 0, 0.0, tl.exp(-(lyp + log_z)))
    ess_t = tl.where(tl.max(e0t, 0) > 0, 0.0, tl.exp(-(lyt + log_z)))
    return log_z, kl_p, kl_t, h_q, ess_p, ess_t


@triton.jit
def _mix_kernel(xp_ptr, xt_ptr, alpha_ptr, force_ptr, out_ptr, stats_ptr, B, V, V_full, stride,
                alpha_min, alpha_max, tol, max_iters, METHOD: tl.constexpr, HAS_FORCE: tl.constexpr,
                BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    lse_p, lse_t, h_p, h_t, kl_pt, kl_tp, lse_sp, lse_st = _model_pass(xp_ptr, xt_ptr, row, V,
                                                                      stride, BLOCK)
    has_sup = lse_sp > float("-inf")
    f = tl.cast(0.0, tl.float32)
    scale = tl.cast(0.0, tl.float32)
    if METHOD == 0:
        raw = tl.load(alpha_ptr + row).to(tl.float32)
        it = tl.cast(0, tl.int32)
    elif METHOD == 1:
        raw = _ratio_or_half(h_p, h_t, 0.0)
        it = tl.cast(1, tl.int32)
    elif METHOD == 4:
        raw = _ratio_or_half(tl.maximum(kl_pt, 0.0), tl.maximum(kl_tp, 0.0), 7.62939453125e-06)
        it = tl.cast(1, tl.int32)
    else:
        raw, it, f, scale = _solve(xp_ptr, xt_ptr, row, V, stride, lse_sp, lse_st, tol, max_iters,
                                   METHOD, BLOCK)
    a = tl.minimum(tl.maximum(raw, alpha_min), alpha_max)
    clamped = a != raw
    orphan = (~has_sup) & (a > 0.0) & (a < 1.0)  # no common support: fall back to pi_t
    a = tl.where(orphan, 0.0, a)
    forced = tl.cast(0, tl.int1)
    if HAS_FORCE:  # a forced row is "fixed" at a = 0, no clamps (its solve above is discarded)
        forced = tl.load(force_ptr + row) != 0
        a = tl.where(forced, 0.0, a)
        clamped = clamped & (~forced)
        orphan = orphan & (~forced)
        it = tl.where(forced, 0, it)
    residual = tl.cast(0.0, tl.float32)
    if METHOD == 2 or METHOD == 3:
        if clamped & has_sup:
            f, _fp, scale = _evaluate(xp_ptr, xt_ptr, row, V, stride, lse_sp, lse_st, a, METHOD,
                                      BLOCK)
        if METHOD == 2:
            residual = tl.abs(f) / (1.0 + scale)
        else:
            residual = tl.abs(f)
        residual = tl.where(has_sup & (~forced), residual, 0.0)
    log_z, kl_p, kl_t, h_q, ess_p, ess_t = _stats_pass(xp_ptr, xt_ptr, row, V, stride, lse_p,
                                                       lse_t, a, BLOCK)
    offs = tl.arange(0, BLOCK)
    plane = tl.cast(B, tl.int64) * V_full  # int64: B * V wraps int32 from B = 7062 at V = 152064
    for start in range(0, V_full, BLOCK):
        cols = start + offs
        xp, xt = _load(xp_ptr, xt_ptr, row, cols, V, stride)
        lp = xp - lse_p
        lt = xt - lse_t
        dst = out_ptr + row * V_full + cols
        keep = cols < V_full
        tl.store(dst, mix_logit(a, lp, lt) - log_z, mask=keep)
        tl.store(dst + plane, lp, mask=keep)
        tl.store(dst + 2 * plane, lt, mask=keep)
    st = stats_ptr + row * 12
    tl.store(st + 0, a)
    tl.store(st + 1, log_z)
    tl.store(st + 2, kl_p)
    tl.store(st + 3, kl_t)
    tl.store(st + 4, ess_p)
    tl.store(st + 5, ess_t)
    tl.store(st + 6, h_p)
    tl.store(st + 7, h_t)
    tl.store(st + 8, h_q)
    tl.store(st + 9, residual)
    tl.store(st + 10, (clamped | orphan).to(tl.float32))
    tl.store(st + 11, it.to(tl.float32))


def _block(V: int) -> int:
    return min(1024, triton.next_power_of_2(V))


def mix_triton(logits_theta, logits_t, method, alpha, alpha_min, alpha_max, vocab_size, force=None) -> Mixture:
    """Launch _mix_kernel (arguments already validated); math in fp32. force: (B,) bool or None."""
    B, V_full = logits_theta.shape
    xp, xt = logits_theta.contiguous(), logits_t.contiguous()
    out = torch.empty((3, B, V_full), dtype=torch.float32, device=xp.device)
    stats = torch.empty((B, NSTAT), dtype=torch.float32, device=xp.device)
    a32 = alpha.to(torch.float32).contiguous()
    force_i8 = a32 if force is None else force.to(torch.int8).contiguous()  # (unused pointer when None)
    _mix_kernel[(B,)](xp, xt, a32, force_i8, out, stats, B,
                      vocab_size or V_full, V_full, xp.stride(0), float(alpha_min),
                      float(alpha_max), TOL[torch.float32], MAX_ITERS,
                      METHOD=METHODS.index(method), HAS_FORCE=force is not None, BLOCK=_block(V_full))
    s = stats.unbind(1)
    return Mixture(alpha=s[0], logq=out[0], logp_theta=out[1], logp_t=out[2], log_z=s[1],
                   kl_theta=s[2], kl_t=s[3], ess_theta=s[4], ess_t=s[5], entropy_theta=s[6],
                   entropy_t=s[7], entropy_q=s[8], residual=s[9], clamped=s[10] > 0,
                   iters=s[11].to(torch.int32))
