"""Building blocks of the fused Triton step, shared by triton_step.py (alpha solve, statistics)
and triton_race.py (truncation, Gumbel race), and triton_mix.py: online log-sum-exp, chunk
reductions, the mixture logit with 0^0 = 1, paired row loads, the statistics accumulators. Device functions only; no launches.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def lse_step(m, z, x):
    """Online log-sum-exp per lane: new max, new sum, rescale of old sums, weight of x."""
    m_new = tl.maximum(m, x)
    live = m_new > float("-inf")
    scale = tl.where(live, tl.exp(m - m_new), 0.0)
    w = tl.where(live & (x > float("-inf")), tl.exp(x - m_new), 0.0)
    return m_new, z * scale + w, scale, w


@triton.jit
def shift_step(m, z, A, x):
    """Online (max, sum w, sum w*(x - max)) per lane: the entropy-style sum without cancellation."""
    m_new, z_new, c, w = lse_step(m, z, x)
    dm = tl.where(m > float("-inf"), m - m_new, 0.0)
    A = c * (A + dm * z) + w * tl.where(x > float("-inf"), x - m_new, 0.0)
    return m_new, z_new, A, c, w


@triton.jit
def factors(m, axis: tl.constexpr):
    """Common max M of per-lane (or per-chunk) maxima and each one's rescale exp(m - M)."""
    M = tl.max(m, axis)
    f = tl.where(m > float("-inf"), tl.exp(m - tl.where(M > float("-inf"), M, 0.0)), 0.0)
    return M, f


@triton.jit
def merge_shift(m, z, A):
    """Reduce per-lane / per-chunk (m, z, A) along axis 0: (M, Z, A at M)."""
    M, f = factors(m, 0)
    dm = tl.where(m > float("-inf"), m - tl.where(M > float("-inf"), M, 0.0), 0.0)
    return M, tl.sum(z * f, 0), tl.sum((A + dm * z) * f, 0)


@triton.jit
def load2(xp_ptr, xt_ptr, row, sp, st, cols, V):
    inb = cols < V
    xp = tl.load(xp_ptr + row * sp + cols, mask=inb, other=float("-inf")).to(tl.float32)
    xt = tl.load(xt_ptr + row * st + cols, mask=inb, other=float("-inf")).to(tl.float32)
    return xp, xt


@triton.jit
def mix_logit(a, lp, lt):
    """a*lp + (1-a)*lt with 0^0 = 1 (ref_mix.mix_logits): lp at a = 1, lt at a = 0."""
    both = (lp > float("-inf")) & (lt > float("-inf"))
    inner = tl.where(both, a * tl.where(both, lp, 0.0) + (1.0 - a) * tl.where(both, lt, 0.0),
                     float("-inf"))
    return tl.where(a == 1.0, lp, tl.where(a == 0.0, lt, inner))


@triton.jit
def stats_init(BLOCK: tl.constexpr):
    """stats_step's 13 per-lane accumulators, empty: (m, z, sxp, sxt, sx) of q, (ypm, ypz),
    (ytm, ytz) of the ESS sums, then the flags infp, inft, e0p, e0t."""
    ninf = tl.full([BLOCK], float("-inf"), tl.float32)
    zero = tl.zeros([BLOCK], tl.float32)
    izero = tl.zeros([BLOCK], tl.int32)
    return ninf, zero, zero, zero, zero, ninf, zero, ninf, zero, izero, izero, izero, izero


@triton.jit
def stats_step(m, z, sxp, sxt, sx, ypm, ypz, ytm, ytz, infp, inft, e0p, e0t, lp, lt, a):
    """Fold one tile of normalised log-probs (lp, lt) at weight a into the accumulators: log Z of
    q, the sums behind KL(q||.) and H(q), the ESS sums log sum pi^2/q, and the flags of infinite
    KL (q > 0 where a model is 0) and zero ESS (a model > 0 where q is 0)."""
    fp = lp > float("-inf")
    ft = lt > float("-inf")
    x = mix_logit(a, lp, lt)
    fx = x > float("-inf")
    m, z, c, w = lse_step(m, z, x)
    sxp = sxp * c + w * tl.where(fx & fp, x - lp, 0.0)
    sxt = sxt * c + w * tl.where(fx & ft, x - lt, 0.0)
    sx = sx * c + w * tl.where(fx, x, 0.0)
    infp = infp | (fx & ~fp).to(tl.int32)
    inft = inft | (fx & ~ft).to(tl.int32)
    ypm, ypz, _c, _w = lse_step(ypm, ypz, tl.where(fp & fx, 2.0 * lp - x, float("-inf")))
    ytm, ytz, _c, _w = lse_step(ytm, ytz, tl.where(ft & fx, 2.0 * lt - x, float("-inf")))
    e0p = e0p | (fp & ~fx).to(tl.int32)
    e0t = e0t | (ft & ~fx).to(tl.int32)
    return m, z, sxp, sxt, sx, ypm, ypz, ytm, ytz, infp, inft, e0p, e0t


@triton.jit
def chunk_vec(ptr, row, NS, k: tl.constexpr, K: tl.constexpr, NSP: tl.constexpr, other):
    """Field k of every chunk's partial record of a row: (NSP,) vector, `other` past NS."""
    c = tl.arange(0, NSP)
    return tl.load(ptr + (row * NS + c) * K + k, mask=c < NS, other=other)
