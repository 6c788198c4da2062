"""Fused Triton sampler: truncation of q by in-kernel threshold search, then the Gumbel race.

One program per row. Every truncation keeps a prefix of the order (-s, token id), stored as
(kstar, idcut): token y is kept iff key(s_y) > kstar or (key(s_y) == kstar and y <= idcut), where
key() maps fp32 to int64 monotonically. min-p sets kstar = key(s_max + log min_p); top-k and
top-p find the threshold by bisection over keys (<= 33 passes each) and break ties by token id
with a bisection over ids. The race draws Philox uniforms (tl.philox, bit-identical to
philox.py) only in tiles that can hold the winner (s >= s_max - GUMBEL_SPAN), so the result
equals ref_sample.py's. Not for: computing q (triton_mix.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .ref_sample import GUMBEL_SPAN


@triton.jit
def _fkey(s):
    """Monotone int64 key of fp32 values (order of the floats, -0.0 just below +0.0)."""
    bits = s.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)


@triton.jit
def _row(ptr, row, cols, V, stride, temp):
    """s = logq / T for one tile (fp32), -inf past V."""
    x = tl.load(ptr + row * stride + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
    return tl.math.div_rn(x, temp)


@triton.jit
def _tally(ptr, row, V, stride, temp, smax, kstar, idcut, klo, khi, cmax, BLOCK: tl.constexpr):
    """Count and mass (sum exp(s - smax)) of kept tokens with klo <= key <= khi and id <= cmax."""
    offs = tl.arange(0, BLOCK)
    cnt = tl.zeros([BLOCK], tl.int32)
    mass = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + offs
        s = _row(ptr, row, cols, V, stride, temp)
        k = _fkey(s)
        sel = (cols < V) & ((k > kstar) | ((k == kstar) & (cols <= idcut)))
        sel = sel & (k >= klo) & (k <= khi) & (cols <= cmax)
        cnt += sel.to(tl.int32)
        mass += tl.where(sel & (s > float("-inf")), tl.exp(s - smax), 0.0)
    return tl.sum(cnt, 0), tl.sum(mass, 0)


@triton.jit
def _tie_cut(ptr, row, V, stride, temp, smax, kstar, idcut, kk, need, BLOCK: tl.constexpr):
    """Smallest id c with #{kept, key == kk, id <= c} >= need (ties broken by token id)."""
    lo = tl.cast(-1, tl.int64)
    hi = tl.cast(V - 1, tl.int64)
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        c, _m = _tally(ptr, row, V, stride, temp, smax, kstar, idcut, kk, kk, mid, BLOCK)
        lo = tl.where(c >= need, lo, mid)
        hi = tl.where(c >= need, mid, hi)
    return hi


@triton.jit
def _search(ptr, row, V, stride, temp, smax, kstar, idcut, target, BY_MASS: tl.constexpr,
            BLOCK: tl.constexpr):
    """Largest key k with count (or mass) of kept tokens with key >= k still >= target."""
    big = tl.cast(2**40, tl.int64)
    lo = kstar
    hi = _fkey(smax) + 1
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        c, m = _tally(ptr, row, V, stride, temp, smax, kstar, idcut, mid, big, big, BLOCK)
        if BY_MASS:
            ok = m >= target
        else:
            ok = c.to(tl.float32) >= target
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid)
    return lo


@triton.jit
def _narrow(ptr, row, V, stride, temp, smax, kstar, idcut, kk, need, BLOCK: tl.constexpr):
    """New (kstar, idcut) keeping key > kk and the first `need` ties at kk (by id)."""
    big = tl.cast(2**40, tl.int64)
    eq, _m = _tally(ptr, row, V, stride, temp, smax, kstar, idcut, kk, kk, big, BLOCK)
    new_cut = tl.where(kk == kstar, idcut, big)
    if need < eq:
        new_cut = _tie_cut(ptr, row, V, stride, temp, smax, kstar, idcut, kk, need, BLOCK)
    return kk, new_cut


@triton.jit
def _truncate(ptr, row, V, stride, temp, smax, top_k, top_p, min_p, BLOCK: tl.constexpr):
    """(kstar, idcut) of the kept prefix after min-p -> top-k -> top-p."""
    big = tl.cast(2**40, tl.int64)
    kstar = _fkey(tl.cast(float("-inf"), tl.float32))
    idcut = big
    if min_p > 0:
        kstar = _fkey(smax + tl.log(min_p))
    if top_k > 0:
        cnt, _m = _tally(ptr, row, V, stride, temp, smax, kstar, idcut, kstar, big, big, BLOCK)
        if top_k < cnt:
            kk = _search(ptr, row, V, stride, temp, smax, kstar, idcut, top_k.to(tl.float32),
                         False, BLOCK)
            gt, _m = _tally(ptr, row, V, stride, temp, smax, kstar, idcut, kk + 1, big, big, BLOCK)
            kstar, idcut = _narrow(ptr, row, V, stride, temp, smax, kstar, idcut, kk,
                                   top_k - gt.to(tl.int64), BLOCK)
    if top_p < 1:
        _c, total = _tally(ptr, row, V, stride, temp, smax, kstar, idcut, kstar, big, big, BLOCK)
        target = top_p * total
        kk = _search(ptr, row, V, stride, temp, smax, kstar, idcut, target, True, BLOCK)
        _c, m_gt = _tally(ptr, row, V, stride, temp, smax, kstar, idcut, kk + 1, big, big, BLOCK)
        eq, m_eq = _tally(ptr, row, V, stride, temp, smax, kstar, idcut, kk, kk, big, BLOCK)
        # ties have equal mass w: keep tie j (0-based, by id) while m_gt + j * w < target
        w = m_eq / eq.to(tl.float32)
        need = tl.ceil((target - m_gt) / w).to(tl.int64)
        need = tl.minimum(tl.maximum(need, 1), eq.to(tl.int64))
        kstar, idcut = _narrow(ptr, row, V, stride, temp, smax, kstar, idcut, kk, need, BLOCK)
    return kstar, idcut


@triton.jit
def _argmax_pass(ptr, row, V, stride, BLOCK: tl.constexpr):
    """Greedy: argmax of logq, lowest id on ties."""
    offs = tl.arange(0, BLOCK)
    best = tl.cast(float("-inf"), tl.float32)
    best_i = tl.cast(0, tl.int64)
    for start in range(0, V, BLOCK):
        cols = start + offs
        x = tl.load(ptr + row * stride + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        bm = tl.max(x, 0)
        bi = tl.argmax(x, 0).to(tl.int64) + start
        take = bm > best
        best_i = tl.where(take, bi, best_i)
        best = tl.where(take, bm, best)
    return best_i


@triton.jit
def _sample_kernel(ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, seed_ptr, key_ptr, pos_ptr,
                   tok_ptr, lpb_ptr, V, stride, span, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    temp = tl.load(temp_ptr + row).to(tl.float32)
    offs = tl.arange(0, BLOCK)
    if temp == 0:
        tl.store(tok_ptr + row, _argmax_pass(ptr, row, V, stride, BLOCK))
        tl.store(lpb_ptr + row, 0.0)
    else:
        top_k = tl.load(topk_ptr + row)
        top_p = tl.load(topp_ptr + row).to(tl.float32)
        min_p = tl.load(minp_ptr + row).to(tl.float32)
        smax = tl.cast(float("-inf"), tl.float32)
        for start in range(0, V, BLOCK):
            smax = tl.maximum(smax, tl.max(_row(ptr, row, start + offs, V, stride, temp), 0))
        kstar, idcut = _truncate(ptr, row, V, stride, temp, smax, top_k, top_p, min_p, BLOCK)
        seed = tl.load(seed_ptr + row)
        key = tl.load(key_ptr + row)
        pos = tl.load(pos_ptr + row)
        zero = tl.zeros([BLOCK], tl.uint32)
        c1 = zero + (pos & 0xFFFFFFFF).to(tl.uint32)
        c2 = zero + (key & 0xFFFFFFFF).to(tl.uint32)
        c3 = zero + ((key >> 32) & 0xFFFFFFFF).to(tl.uint32)
        floor = smax - span
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        z = tl.zeros([BLOCK], tl.float32)
        best = tl.cast(float("-inf"), tl.float32)
        best_i = tl.cast(0, tl.int64)
        best_s = tl.cast(0.0, tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + offs
            s = _row(ptr, row, cols, V, stride, temp)
            k = _fkey(s)
            kept = (cols < V) & ((k > kstar) | ((k == kstar) & (cols <= idcut)))
            s = tl.where(kept, s, float("-inf"))
            m_new = tl.maximum(m, s)
            live = m_new > float("-inf")
            z = z * tl.where(live, tl.exp(m - m_new), 0.0) + tl.where(live & (s > float("-inf")),
                                                                      tl.exp(s - m_new), 0.0)
            m = m_new
            if tl.max(s, 0) >= floor:  # only tiles that can hold the winner draw noise
                r, _r1, _r2, _r3 = tl.philox(seed, cols.to(tl.uint32), c1, c2, c3)
                u = ((r >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07
                score = tl.where(s >= floor, s + -tl.log(-tl.log(u)), float("-inf"))
                bm = tl.max(score, 0)
                bi = tl.argmax(score, 0)
                take = bm > best
                best_s = tl.where(take, tl.sum(tl.where(offs == bi, s, 0.0), 0), best_s)
                best_i = tl.where(take, bi.to(tl.int64) + start, best_i)
                best = tl.where(take, bm, best)
        M = tl.max(m, 0)
        lse = M + tl.log(tl.sum(z * tl.where(m > float("-inf"), tl.exp(m - M), 0.0), 0))
        tl.store(tok_ptr + row, best_i)
        tl.store(lpb_ptr + row, best_s - lse)


def sample_triton(logq, temperature, top_k, top_p, min_p, seeds, keys, positions):
    """Launch _sample_kernel (arguments already validated, all (B,) tensors); math in fp32."""
    B, V = logq.shape
    x = logq.contiguous()
    tokens = torch.empty(B, dtype=torch.int64, device=x.device)
    lpb = torch.empty(B, dtype=torch.float32, device=x.device)
    _sample_kernel[(B,)](x, temperature.to(torch.float32).contiguous(), top_k, top_p.to(torch.float32).contiguous(),
                         min_p.to(torch.float32).contiguous(), seeds, keys, positions, tokens,
                         lpb, V, x.stride(0), GUMBEL_SPAN, BLOCK=min(1024, triton.next_power_of_2(V)))
    return tokens, lpb.to(logq.dtype)
