"""Fused Triton `step` on CUDA, part 1: the alpha solve and the statistics of q, split across programs.

Every row is cut into NS chunks of CHUNK columns (CHUNK and NS depend on the vocabulary only), and
each pass is one launch on a (B, NS) grid that writes per-chunk partials; the next launch reduces
a row's partials in a fixed order (the same tree for every row, every batch), so a row gives
bit-identical results alone or inside any batch, and B = 1 still spreads over >= 32 programs at
LM vocabularies. Passes over the two logit rows (each a launch; the small reduce launches read only
partials):
  1. model pass  lse of both models, their entropies, KL(pi_theta||pi_t) both ways, masses of S;
  2. solve       kl_symmetry / ess_balance: one pass per Newton evaluation (NEWTON_LAUNCHES split
                 launches, then the few rows still going finish in one program per row, same math);
  3. stats pass  log Z, KL(q||.), H(q), ESS at the final alpha (the residual of a clamped alpha
                 rides along: no extra pass).
Truncation and the race are triton_trunc.py. Nothing here waits on the host; every launch passes
enable_fp_fusion=False (the C step's -ffp-contract=off): a*lp + (1-a)*lt must round the same in
every pass that recomputes it. Offsets are int64 wherever a row index multiplies a stride.
Not for: `mix` (triton_mix.py keeps its own kernel for API users) or fp64 (reference).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import triton_race as R
from .ref_sample import GUMBEL_SPAN
from .ref_solve import MAX_ITERS, TOL
from .triton_parts import (chunk_vec, factors, load2, lse_step, merge_shift, shift_step, stats_init,
                           stats_step)
from .types import METHODS

NEWTON_LAUNCHES = 8   # split Newton evaluations launched per step; later ones run per row
NMODEL, NMOM, NSTATE, NSTATS = 14, 6, 8, 18  # partial / state record widths (floats)
KL_ZERO = tl.constexpr(7.62939453125e-06)  # 64 * 2^-23, as ref_solve.KL_ZERO for fp32
PASS_WARPS = 8  # the full-row passes keep ~15 (BLOCK,) fp32 accumulators: 8 warps, no spills


def layout(V: int) -> tuple[int, int, int]:
    """(CHUNK, NS, BLOCK) for a vocabulary of V columns: >= 32 chunks from V = 32768 on.
    BLOCK (the tile a program loads at once) is 1024 on a GPU; the CPU interpreter pays per
    operation, not per element, so there a large vocabulary loads a whole chunk per tile and a
    small one 256-wide tiles (several per chunk: the in-program online merge stays tested)."""
    chunk = 1024
    while chunk < 8192 and chunk * 2 * 32 <= V:
        chunk *= 2
    block = min(chunk, 1024)
    if os.environ.get("TRITON_INTERPRET") == "1":
        block = chunk if V >= 65536 else 256
    return chunk, triton.cdiv(V, chunk), block


def launch(kernel, grid, *args, **meta):
    """Every launch of the fused step goes through here (tests count them; fp contraction off)."""
    kernel[grid](*args, enable_fp_fusion=False, **meta)


# ----------------------------------------------------------------------------- 1. model pass
@triton.jit
def _model_part(xp_ptr, xt_ptr, sp, st, part_ptr, V, NS, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c0 = tl.program_id(1) * CHUNK
    offs = tl.arange(0, BLOCK)
    ninf = tl.full([BLOCK], float("-inf"), tl.float32)
    zero = tl.zeros([BLOCK], tl.float32)
    izero = tl.zeros([BLOCK], tl.int32)
    mp, zp, ap, kp, mt, zt, at, kt = ninf, zero, zero, zero, ninf, zero, zero, zero
    msp, zsp, mst, zst, ipt, itp = ninf, zero, ninf, zero, izero, izero
    for t in range(0, CHUNK, BLOCK):
        xp, xt = load2(xp_ptr, xt_ptr, row, sp, st, c0 + t + offs, V)
        fp = xp > float("-inf")
        ft = xt > float("-inf")
        both = fp & ft
        dd = tl.where(both, xp - xt, 0.0)
        mp, zp, ap, cp, wp = shift_step(mp, zp, ap, xp)
        kp = kp * cp + wp * dd
        mt, zt, at, ct, wt = shift_step(mt, zt, at, xt)
        kt = kt * ct - wt * dd
        msp, zsp, _c, _w = lse_step(msp, zsp, tl.where(both, xp, float("-inf")))
        mst, zst, _c, _w = lse_step(mst, zst, tl.where(both, xt, float("-inf")))
        ipt = ipt | (fp & ~ft).to(tl.int32)
        itp = itp | (ft & ~fp).to(tl.int32)
    out = part_ptr + (row * NS + tl.program_id(1)) * 14
    M, f = factors(mp, 0)
    M, Z, A = merge_shift(mp, zp, ap)
    tl.store(out + 0, M)
    tl.store(out + 1, Z)
    tl.store(out + 2, A)
    tl.store(out + 3, tl.sum(kp * f, 0))
    M, f = factors(mt, 0)
    M, Z, A = merge_shift(mt, zt, at)
    tl.store(out + 4, M)
    tl.store(out + 5, Z)
    tl.store(out + 6, A)
    tl.store(out + 7, tl.sum(kt * f, 0))
    M, f = factors(msp, 0)
    tl.store(out + 8, M)
    tl.store(out + 9, tl.sum(zsp * f, 0))
    M, f = factors(mst, 0)
    tl.store(out + 10, M)
    tl.store(out + 11, tl.sum(zst * f, 0))
    tl.store(out + 12, tl.max(ipt, 0).to(tl.float32))
    tl.store(out + 13, tl.max(itp, 0).to(tl.float32))


@triton.jit
def _ratio_or_half(num, den, zero):
    tot = num + den
    a = tl.where(tot > zero, num / tl.where(tot > 0, tot, 1.0), 0.5)
    a = tl.where((num == float("inf")) & (den < float("inf")), 1.0, a)
    a = tl.where((den == float("inf")) & (num < float("inf")), 0.0, a)
    return tl.where((num == float("inf")) & (den == float("inf")), 0.5, a)


@triton.jit
def _side(part_ptr, row, NS, k: tl.constexpr, NSP: tl.constexpr):
    """One model's lse, entropy and E[x_self - x_other] from the chunk partials at fields k..k+3."""
    m = chunk_vec(part_ptr, row, NS, k, 14, NSP, float("-inf"))
    M, f = factors(m, 0)
    M, Z, A = merge_shift(m, chunk_vec(part_ptr, row, NS, k + 1, 14, NSP, 0.0),
                           chunk_vec(part_ptr, row, NS, k + 2, 14, NSP, 0.0))
    cross = tl.sum(chunk_vec(part_ptr, row, NS, k + 3, 14, NSP, 0.0) * f, 0) / Z
    return M + tl.log(Z), tl.log(Z) - A / Z, cross  # H = log Z - E[x - M]


@triton.jit
def _support_lse(part_ptr, row, NS, k: tl.constexpr, NSP: tl.constexpr):
    M, f = factors(chunk_vec(part_ptr, row, NS, k, 14, NSP, float("-inf")), 0)
    z = tl.sum(chunk_vec(part_ptr, row, NS, k + 1, 14, NSP, 0.0) * f, 0)
    return tl.where(M > float("-inf"), M + tl.log(z), float("-inf"))


@triton.jit
def _model_reduce(part_ptr, row_ptr, state_ptr, NS, NSP: tl.constexpr):
    """Row constants: lse_p, lse_t, lse_sp, lse_st, H_p, H_t, KL_pt, KL_tp; Newton state at a = 0.5."""
    row = tl.program_id(0).to(tl.int64)
    lse_p, h_p, cross_p = _side(part_ptr, row, NS, 0, NSP)
    lse_t, h_t, cross_t = _side(part_ptr, row, NS, 4, NSP)
    lse_sp = _support_lse(part_ptr, row, NS, 8, NSP)
    lse_st = _support_lse(part_ptr, row, NS, 10, NSP)
    inf_pt = tl.max(chunk_vec(part_ptr, row, NS, 12, 14, NSP, 0.0), 0) > 0
    inf_tp = tl.max(chunk_vec(part_ptr, row, NS, 13, 14, NSP, 0.0), 0) > 0
    kl_pt = cross_p - (lse_p - lse_t)   # sum p (lp - lt) = E_p[xp - xt] - (lse_p - lse_t)
    kl_tp = cross_t - (lse_t - lse_p)
    out = row_ptr + row * 8
    tl.store(out + 0, lse_p)
    tl.store(out + 1, lse_t)
    tl.store(out + 2, lse_sp)
    tl.store(out + 3, lse_st)
    tl.store(out + 4, h_p)
    tl.store(out + 5, h_t)
    tl.store(out + 6, tl.where(inf_pt, float("inf"), tl.maximum(kl_pt, 0.0)))
    tl.store(out + 7, tl.where(inf_tp, float("inf"), tl.maximum(kl_tp, 0.0)))
    # Newton state: a, lo, hi, it, done, f, scale, pending (a row without common support is done)
    _store_state(state_ptr, row, tl.cast(0.5, tl.float32), tl.cast(0.0, tl.float32),
                 tl.cast(1.0, tl.float32), tl.cast(0.0, tl.float32), lse_sp == float("-inf"),
                 tl.cast(0.0, tl.float32), tl.cast(0.0, tl.float32), lse_sp < float("-inf"))


# ----------------------------------------------------------------------------- 2. Newton solve
@triton.jit
def _moments_chunk(xp_ptr, xt_ptr, sp, st, row, c0, V, lse_sp, lse_st, b1, b2, ESS,
                   CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """On S, one chunk: (m, z, E-sum of d, E-sum of d^2) at b1 and (m, z, E-sum of d) at b2 (ESS)
    of w ∝ exp(lt_S - b*d), d = lt_S - lp_S; per-chunk scalars."""
    offs = tl.arange(0, BLOCK)
    m1 = tl.full([BLOCK], float("-inf"), tl.float32)
    z1 = tl.zeros([BLOCK], tl.float32)
    s1 = tl.zeros([BLOCK], tl.float32)
    q1 = tl.zeros([BLOCK], tl.float32)
    m2 = tl.full([BLOCK], float("-inf"), tl.float32)
    z2 = tl.zeros([BLOCK], tl.float32)
    s2 = tl.zeros([BLOCK], tl.float32)
    for t in range(0, CHUNK, BLOCK):
        xp, xt = load2(xp_ptr, xt_ptr, row, sp, st, c0 + t + offs, V)
        sup = (xp > float("-inf")) & (xt > float("-inf"))
        lts = tl.where(sup, xt - lse_st, 0.0)
        d = tl.where(sup, lts - tl.where(sup, xp - lse_sp, 0.0), 0.0)
        m1, z1, c1, w1 = lse_step(m1, z1, tl.where(sup, lts - b1 * d, float("-inf")))
        s1 = s1 * c1 + w1 * d
        q1 = q1 * c1 + w1 * d * d
        if ESS:
            m2, z2, c2, w2 = lse_step(m2, z2, tl.where(sup, lts - b2 * d, float("-inf")))
            s2 = s2 * c2 + w2 * d
    M1, f1 = factors(m1, 0)
    M2, f2 = factors(m2, 0)
    return (M1, tl.sum(z1 * f1, 0), tl.sum(s1 * f1, 0), tl.sum(q1 * f1, 0), M2, tl.sum(z2 * f2, 0),
            tl.sum(s2 * f2, 0))


@triton.jit
def _evaluate(m1, z1, s1, q1, m2, z2, s2, ESS):
    """f, f', scale from per-chunk moment vectors: kl_symmetry (g, -Var) or ess_balance (h, h')."""
    M1, f1 = factors(m1, 0)
    Z1 = tl.sum(z1 * f1, 0)
    e1 = tl.sum(s1 * f1, 0) / Z1
    lz1 = M1 + tl.log(Z1)
    M2, f2 = factors(m2, 0)
    Z2 = tl.sum(z2 * f2, 0)
    lz2 = M2 + tl.log(tl.where(Z2 > 0, Z2, 1.0))
    e2 = tl.sum(s2 * f2, 0) / tl.where(Z2 > 0, Z2, 1.0)
    var = tl.maximum(tl.sum(q1 * f1, 0) / Z1 - e1 * e1, 0.0)
    f = tl.where(ESS, lz1 - lz2, e1)
    fp = tl.where(ESS, e1 - e2, -var)
    scale = tl.where(ESS, tl.maximum(tl.abs(lz1), tl.abs(lz2)), tl.maximum(-lz1, 0.0))
    return f, fp, scale


@triton.jit
def _newton_update(a, lo, hi, it, f, fp, scale, tol, max_iters):
    """One safeguarded Newton step after an evaluation at a (ref_solve._newton, fp32)."""
    it = it + 1.0
    stop = (tl.abs(f) <= tol * (1.0 + scale)) | (hi - lo <= 2.384185791015625e-07 * hi) | (it >= max_iters)
    lo = tl.where(f > 0, a, lo)
    hi = tl.where(f < 0, a, hi)
    cand = a - f / tl.where(fp < 0, fp, -1.0)
    ok = (fp < -1e-30) & (cand > lo) & (cand < hi)
    a = tl.where(stop, a, tl.where(ok, cand, 0.5 * (lo + hi)))
    return a, lo, hi, it, stop


@triton.jit
def _read_update(state_in, mom_in, row, NS, tol, max_iters, ESS, NSP: tl.constexpr):
    """The state after folding in the pending evaluation (every program of a row computes it)."""
    s = state_in + row * 8
    a, lo, hi, it = tl.load(s + 0), tl.load(s + 1), tl.load(s + 2), tl.load(s + 3)
    done = tl.load(s + 4) != 0
    f, scale, pending = tl.load(s + 5), tl.load(s + 6), tl.load(s + 7) != 0
    if pending & (~done):
        ninf = float("-inf")
        f, fp, scale = _evaluate(chunk_vec(mom_in, row, NS, 0, 7, NSP, ninf), chunk_vec(mom_in, row, NS, 1, 7, NSP, 0.0),
                                 chunk_vec(mom_in, row, NS, 2, 7, NSP, 0.0), chunk_vec(mom_in, row, NS, 3, 7, NSP, 0.0),
                                 chunk_vec(mom_in, row, NS, 4, 7, NSP, ninf), chunk_vec(mom_in, row, NS, 5, 7, NSP, 0.0),
                                 chunk_vec(mom_in, row, NS, 6, 7, NSP, 0.0), ESS)
        a, lo, hi, it, done = _newton_update(a, lo, hi, it, f, fp, scale, tol, max_iters)
    return a, lo, hi, it, done, f, scale


@triton.jit
def _store_state(state_out, row, a, lo, hi, it, done, f, scale, pending):
    s = state_out + row * 8
    tl.store(s + 0, a)
    tl.store(s + 1, lo)
    tl.store(s + 2, hi)
    tl.store(s + 3, it)
    tl.store(s + 4, done.to(tl.float32))
    tl.store(s + 5, f)
    tl.store(s + 6, scale)
    tl.store(s + 7, pending.to(tl.float32))


@triton.jit(do_not_specialize=["METHOD"])  # runtime flags: one compiled variant
def _newton_part(xp_ptr, xt_ptr, sp, st, rowc_ptr, state_in, mom_in, state_out, mom_out, V, NS,
                 tol, max_iters, METHOD, CHUNK: tl.constexpr, BLOCK: tl.constexpr, NSP: tl.constexpr):
    """Fold in the last evaluation, then evaluate this chunk's moments at the new a (if going).
    Double-buffered (in/out): programs of one launch never read what another writes."""
    row = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1)
    ESS = METHOD == 3
    a, lo, hi, it, done, f, scale = _read_update(state_in, mom_in, row, NS, tol, max_iters, ESS, NSP)
    if ch == 0:
        _store_state(state_out, row, a, lo, hi, it, done, f, scale, ~done)
    if not done:
        lse_sp = tl.load(rowc_ptr + row * 8 + 2)
        lse_st = tl.load(rowc_ptr + row * 8 + 3)
        # ess_balance evaluates Z at 2 - a and -a; kl_symmetry at a (with Var)
        r = _moments_chunk(xp_ptr, xt_ptr, sp, st, row, ch * CHUNK, V, lse_sp, lse_st,
                           tl.where(ESS, 2.0 - a, a), -a, ESS, CHUNK, BLOCK)
        out = mom_out + (row * NS + ch) * 7
        for k in tl.static_range(7):
            tl.store(out + k, r[k])


@triton.jit(do_not_specialize=["METHOD", "HAS_FORCE"])  # runtime flags: one compiled variant
def _solve_finish(xp_ptr, xt_ptr, sp, st, rowc_ptr, state_in, mom_in, alpha_ptr, force_ptr, fin_ptr,
                  V, NS, METHOD, HAS_FORCE, alpha_min, alpha_max, tol, max_iters,
                  CHUNK: tl.constexpr, BLOCK: tl.constexpr, NSP: tl.constexpr):
    """One program per row: the rows still solving go on (one full pass per evaluation, chunks in
    the same order and the same reduction as the split launches); then clamps, orphans, forced
    rows. Writes a, iters, clamped|orphan, forced, residual (or -1 when the stats pass must
    evaluate it at a clamped a)."""
    row = tl.program_id(0).to(tl.int64)
    rc = rowc_ptr + row * 8
    lse_sp, lse_st = tl.load(rc + 2), tl.load(rc + 3)
    has_sup = lse_sp > float("-inf")
    ESS = METHOD == 3
    f = tl.cast(0.0, tl.float32)
    scale = tl.cast(0.0, tl.float32)
    it = tl.cast(0.0, tl.float32)
    if METHOD == 0:
        raw = tl.load(alpha_ptr + row).to(tl.float32)
    elif METHOD == 1:
        raw = _ratio_or_half(tl.load(rc + 4), tl.load(rc + 5), 0.0)
        it = 1.0
    elif METHOD == 4:
        raw = _ratio_or_half(tl.load(rc + 6), tl.load(rc + 7), KL_ZERO)
        it = 1.0
    else:
        raw, lo, hi, it, done, f, scale = _read_update(state_in, mom_in, row, NS, tol, max_iters, ESS, NSP)
        cidx = tl.arange(0, NSP)
        while not done:
            ninf = tl.full([NSP], float("-inf"), tl.float32)
            zero = tl.zeros([NSP], tl.float32)
            v0, v1, v2, v3, v4, v5, v6 = ninf, zero, zero, zero, ninf, zero, zero
            for ch in range(0, NS):
                r = _moments_chunk(xp_ptr, xt_ptr, sp, st, row, ch * CHUNK, V, lse_sp, lse_st,
                                   tl.where(ESS, 2.0 - raw, raw), -raw, ESS, CHUNK, BLOCK)
                here = cidx == ch
                v0, v1, v2, v3 = tl.where(here, r[0], v0), tl.where(here, r[1], v1), tl.where(here, r[2], v2), tl.where(here, r[3], v3)
                v4, v5, v6 = tl.where(here, r[4], v4), tl.where(here, r[5], v5), tl.where(here, r[6], v6)
            f, fp, scale = _evaluate(v0, v1, v2, v3, v4, v5, v6, ESS)
            raw, lo, hi, it, done = _newton_update(raw, lo, hi, it, f, fp, scale, tol, max_iters)
    a = tl.minimum(tl.maximum(raw, alpha_min), alpha_max)
    clamped = a != raw
    orphan = (~has_sup) & (a > 0.0) & (a < 1.0)  # no common support: fall back to pi_t
    a = tl.where(orphan, 0.0, a)
    evals = tl.where((METHOD == 2) | (METHOD == 3), it, 0.0)  # passes the solve read
    forced = tl.cast(0, tl.int1)
    if HAS_FORCE:  # a forced row is "fixed" at a = 0, no clamps (its solve is discarded)
        forced = tl.load(force_ptr + row) != 0
        a = tl.where(forced, 0.0, a)
        clamped = clamped & (~forced)
        orphan = orphan & (~forced)
        it = tl.where(forced, 0.0, it)
    residual = tl.cast(0.0, tl.float32)
    if (METHOD == 2) | (METHOD == 3):
        residual = tl.where(METHOD == 2, tl.abs(f) / (1.0 + scale), tl.abs(f))
        residual = tl.where(clamped & has_sup, -1.0, residual)  # evaluated in the stats pass
        residual = tl.where(has_sup & (~forced), residual, 0.0)
    o = fin_ptr + row * 6
    tl.store(o + 5, evals)
    tl.store(o + 0, a)
    tl.store(o + 1, it)
    tl.store(o + 2, (clamped | orphan).to(tl.float32))
    tl.store(o + 3, forced.to(tl.float32))
    tl.store(o + 4, residual)


# ----------------------------------------------------------------------------- 3. stats pass
@triton.jit(do_not_specialize=["METHOD"])  # runtime flags: one compiled variant
def _stats_part(xp_ptr, xt_ptr, sp, st, rowc_ptr, fin_ptr, part_ptr, V, NS, METHOD,
                CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """log Z, KL(q||.), H(q), ESS partials at the final a; S-moments at a when the residual of a
    clamped a is still owed (same data, no extra pass)."""
    row = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1)
    rc = rowc_ptr + row * 8
    lse_p, lse_t, lse_sp, lse_st = tl.load(rc + 0), tl.load(rc + 1), tl.load(rc + 2), tl.load(rc + 3)
    a = tl.load(fin_ptr + row * 6)
    offs = tl.arange(0, BLOCK)
    m, z, sxp, sxt, sx, ypm, ypz, ytm, ytz, infp, inft, e0p, e0t = stats_init(BLOCK)
    for t in range(0, CHUNK, BLOCK):
        xp, xt = load2(xp_ptr, xt_ptr, row, sp, st, ch * CHUNK + t + offs, V)
        m, z, sxp, sxt, sx, ypm, ypz, ytm, ytz, infp, inft, e0p, e0t = stats_step(
            m, z, sxp, sxt, sx, ypm, ypz, ytm, ytz, infp, inft, e0p, e0t, xp - lse_p, xt - lse_t, a)
    out = part_ptr + (row * NS + ch) * 18
    M, f = factors(m, 0)
    tl.store(out + 0, M)
    tl.store(out + 1, tl.sum(z * f, 0))
    tl.store(out + 2, tl.sum(sxp * f, 0))
    tl.store(out + 3, tl.sum(sxt * f, 0))
    tl.store(out + 4, tl.sum(sx * f, 0))
    tl.store(out + 5, tl.max(infp, 0).to(tl.float32))
    tl.store(out + 6, tl.max(inft, 0).to(tl.float32))
    M, f = factors(ypm, 0)
    tl.store(out + 7, M)
    tl.store(out + 8, tl.sum(ypz * f, 0))
    M, f = factors(ytm, 0)
    tl.store(out + 9, M)
    tl.store(out + 10, tl.sum(ytz * f, 0))
    tl.store(out + 11, tl.max(e0p, 0).to(tl.float32))
    tl.store(out + 12, tl.max(e0t, 0).to(tl.float32))
    if tl.load(fin_ptr + row * 6 + 4) < 0:  # residual owed at a clamped a
        ESS = METHOD == 3
        r = _moments_chunk(xp_ptr, xt_ptr, sp, st, row, ch * CHUNK, V, lse_sp, lse_st,
                           tl.where(ESS, 2.0 - a, a), -a, ESS, CHUNK, BLOCK)
        tl.store(out + 13, r[0])  # what _evaluate needs for f and scale: m1, z1, s1, m2, z2
        tl.store(out + 14, r[1])
        tl.store(out + 15, r[2])
        tl.store(out + 16, r[4])
        tl.store(out + 17, r[5])


@triton.jit(do_not_specialize=["METHOD"])  # runtime flags: one compiled variant
def _stats_reduce(part_ptr, rowc_ptr, fin_ptr, out_ptr, B, NS, METHOD, NSP: tl.constexpr):
    """Per-row outputs: alpha, log_z, kl_theta, kl_t, ess_theta, ess_t, entropies, residual."""
    row = tl.program_id(0).to(tl.int64)
    ninf = float("-inf")
    m = chunk_vec(part_ptr, row, NS, 0, 18, NSP, ninf)
    M, f = factors(m, 0)
    zs = tl.sum(chunk_vec(part_ptr, row, NS, 1, 18, NSP, 0.0) * f, 0)
    log_z = M + tl.log(zs)
    kl_p = tl.sum(chunk_vec(part_ptr, row, NS, 2, 18, NSP, 0.0) * f, 0) / zs - log_z
    kl_t = tl.sum(chunk_vec(part_ptr, row, NS, 3, 18, NSP, 0.0) * f, 0) / zs - log_z
    h_q = log_z - tl.sum(chunk_vec(part_ptr, row, NS, 4, 18, NSP, 0.0) * f, 0) / zs
    kl_p = tl.where(tl.max(chunk_vec(part_ptr, row, NS, 5, 18, NSP, 0.0), 0) > 0, float("inf"), kl_p)
    kl_t = tl.where(tl.max(chunk_vec(part_ptr, row, NS, 6, 18, NSP, 0.0), 0) > 0, float("inf"), kl_t)
    My, fy = factors(chunk_vec(part_ptr, row, NS, 7, 18, NSP, ninf), 0)
    lyp = My + tl.log(tl.sum(chunk_vec(part_ptr, row, NS, 8, 18, NSP, 0.0) * fy, 0))
    My, fy = factors(chunk_vec(part_ptr, row, NS, 9, 18, NSP, ninf), 0)
    lyt = My + tl.log(tl.sum(chunk_vec(part_ptr, row, NS, 10, 18, NSP, 0.0) * fy, 0))
    ess_p = tl.where(tl.max(chunk_vec(part_ptr, row, NS, 11, 18, NSP, 0.0), 0) > 0, 0.0, tl.exp(-(lyp + log_z)))
    ess_t = tl.where(tl.max(chunk_vec(part_ptr, row, NS, 12, 18, NSP, 0.0), 0) > 0, 0.0, tl.exp(-(lyt + log_z)))
    fin = fin_ptr + row * 6
    residual = tl.load(fin + 4)
    if residual < 0:
        ESS = METHOD == 3
        zero = tl.zeros([NSP], tl.float32)
        r, _fp, scale = _evaluate(chunk_vec(part_ptr, row, NS, 13, 18, NSP, ninf),
                                  chunk_vec(part_ptr, row, NS, 14, 18, NSP, 0.0),
                                  chunk_vec(part_ptr, row, NS, 15, 18, NSP, 0.0),
                                  zero, chunk_vec(part_ptr, row, NS, 16, 18, NSP, ninf),
                                  chunk_vec(part_ptr, row, NS, 17, 18, NSP, 0.0), zero, ESS)
        residual = tl.where(ESS, tl.abs(r), tl.abs(r) / (1.0 + scale))
    rc = rowc_ptr + row * 8
    vals = (tl.load(fin), log_z, kl_p, kl_t, ess_p, ess_t, tl.load(rc + 4), tl.load(rc + 5), h_q, residual, M)
    for k in tl.static_range(11):
        tl.store(out_ptr + (4 + k) * B + row, vals[k])


# ----------------------------------------------------------------------------- host side
def step_triton(logits_theta, logits_t, method, alpha, alpha_min, alpha_max, vocab_size, temperature,
                top_k, top_p, min_p, seeds, keys, positions, *, force=None, may_truncate=True):
    """The fused step (arguments validated; per-row values are (B,) device tensors): a fixed
    sequence of launches, no host sync, only (B,) outputs. may_truncate=False (the caller knows
    every row has top_k = 0 and top_p = 1, or T = 0) skips the top-k / top-p launches."""
    from .types import Step

    xp, xt = logits_theta, logits_t
    if xp.dtype != xt.dtype:
        xp, xt = xp.float(), xt.float()
    xp = xp if xp.stride(-1) == 1 else xp.contiguous()
    xt = xt if xt.stride(-1) == 1 else xt.contiguous()
    B = xp.shape[0]
    V = vocab_size or xp.shape[1]
    CHUNK, NS, BLOCK = layout(V)
    NSP = triton.next_power_of_2(NS)
    dev, f32, i64 = xp.device, torch.float32, torch.int64
    meth, tol = METHODS.index(method), TOL[torch.float32]
    g1, g2 = (B,), (B, NS)
    rows = (xp, xt, xp.stride(0), xt.stride(0))
    rowc = torch.empty((B, 8), dtype=f32, device=dev)
    part = torch.empty((B, NS, NSTATS), dtype=f32, device=dev)
    state = torch.empty((2, B, NSTATE), dtype=f32, device=dev)
    fin = torch.empty((B, 6), dtype=f32, device=dev)
    out = torch.empty((15, B), dtype=f32, device=dev)
    launch(_model_part, g2, *rows, part, V, NS, CHUNK=CHUNK, BLOCK=BLOCK, num_warps=PASS_WARPS)
    launch(_model_reduce, g1, part, rowc, state[0], NS, NSP=NSP)
    n = NEWTON_LAUNCHES if method in ("kl_symmetry", "ess_balance") else 0
    mom = torch.empty((2, B, NS, 7), dtype=f32, device=dev) if n else state
    for i in range(n):
        launch(_newton_part, g2, *rows, rowc, state[i % 2], mom[i % 2], state[1 - i % 2], mom[1 - i % 2],
               V, NS, tol, MAX_ITERS, meth, CHUNK=CHUNK, BLOCK=BLOCK, NSP=NSP, num_warps=PASS_WARPS)
    a32 = alpha.to(f32).contiguous()
    force_arg = a32 if force is None else force.to(torch.int8).contiguous()  # (unread when None)
    launch(_solve_finish, g1, *rows, rowc, state[n % 2], mom[n % 2], a32, force_arg, fin, V, NS, meth,
           int(force is not None), float(alpha_min), float(alpha_max), tol, MAX_ITERS,
           CHUNK=CHUNK, BLOCK=BLOCK, NSP=NSP, num_warps=PASS_WARPS)
    launch(_stats_part, g2, *rows, rowc, fin, part, V, NS, meth, CHUNK=CHUNK, BLOCK=BLOCK, num_warps=PASS_WARPS)
    launch(_stats_reduce, g1, part, rowc, fin, out, B, NS, meth, NSP=NSP)
    temp, topp, minp = (t.to(f32).contiguous() for t in (temperature, top_p, min_p))
    topk, seeds, keys, positions = (t.to(i64).contiguous() for t in (top_k, seeds, keys, positions))
    params = (out, temp, topk, topp, minp)
    plan = torch.empty((B, 8), dtype=i64, device=dev)
    offsets = torch.empty((B, NS), dtype=i64, device=dev)
    cnt = torch.empty((B, NS, R.NPIV), dtype=torch.int32, device=dev) if may_truncate else offsets
    mass = torch.empty((B, NS, R.NPIV), dtype=f32, device=dev) if may_truncate else offsets
    if may_truncate:
        launch(R._trunc_count, g2, *rows, rowc, *params, cnt, mass, B, V, NS, CHUNK=CHUNK, TB=min(BLOCK, 128) if BLOCK <= 1024 else BLOCK,
               NP=R.NPIV, num_warps=PASS_WARPS)
    launch(R._trunc_plan, g1, *params, cnt, mass, plan, offsets, B, NS, NP=R.NPIV, NSP=NSP, CAP_=R.CAP)
    if may_truncate:
        cand_s = torch.empty((B, R.CAP), dtype=f32, device=dev)
        cand_id = torch.empty((B, R.CAP), dtype=torch.int32, device=dev)
        launch(R._trunc_gather, g2, *rows, rowc, out, temp, plan, offsets, cand_s, cand_id, B, V, NS,
               CHUNK=CHUNK, BLOCK=BLOCK, CAP_=R.CAP, num_warps=PASS_WARPS)
        launch(R._trunc_select, g1, *params, plan, cand_s, cand_id, B, CAP_=R.CAP, NP=R.NPIV, TI=64, num_warps=PASS_WARPS)
        launch(R._trunc_fallback, g1, *rows, rowc, *params, plan, B, V, BLOCK=BLOCK, num_warps=PASS_WARPS)
    race = torch.empty((B, NS, 7), dtype=f32, device=dev)
    race_id = torch.empty((B, NS), dtype=i64, device=dev)
    tokens = torch.empty(B, dtype=i64, device=dev)
    passes = torch.empty(B, dtype=torch.int32, device=dev)
    launch(R._race_part, g2, *rows, rowc, out, temp, seeds, keys, positions, plan, race, race_id, B, V, NS,
           GUMBEL_SPAN, CHUNK=CHUNK, BLOCK=BLOCK, num_warps=PASS_WARPS)
    launch(R._race_reduce, g1, race, race_id, out, tokens, temp, plan, fin, passes, B, NS, int(may_truncate),
           NSP=NSP)
    o = out.unbind(0)
    return Step(tokens=tokens, logp_theta=o[0], logp_t=o[1], logq=o[2], logp_behavior=o[3], alpha=o[4],
                log_z=o[5], kl_theta=o[6], kl_t=o[7], ess_theta=o[8], ess_t=o[9], entropy_theta=o[10],
                entropy_t=o[11], entropy_q=o[12], residual=o[13], iters=fin[:, 1].to(torch.int32),
                clamped=fin[:, 2] > 0, passes=passes)
