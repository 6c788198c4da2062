"""Fused Triton `step` on CUDA, part 2: truncation (min-p -> top-k -> top-p) and the Gumbel race.

s = logq / T is recomputed from the two logit rows in every pass (never stored). Every
truncation keeps a prefix of the order (-s, token id), stored per row as (kstar, idcut): token y
is kept iff key(s_y) > kstar or (key(s_y) == kstar and y <= idcut), with key() the monotone int
map of fp32. min-p costs no pass (kstar = key(s_max + log min_p)). top-k / top-p:
  count pass   count and mass of kept tokens at NPIV thresholds s_max - delta_j (delta geometric
               from 2^-5.5 to 2^9, plus the min-p floor), per chunk;
  plan         (one program per row) the highest threshold whose prefix surely holds the kept
               set (count >= k with top-k, else mass >= p * total with a 1e-4 margin); when it has
               <= CAP tokens: each chunk's slot offset (prefix sums, chunk order);
  gather pass  the prefix's (s, id) into a (B, CAP) buffer, in token order (deterministic);
  select       (one program per row) sort the candidates by (-s, id), apply top-k then top-p
               exactly as the reference (cumulative mass in sorted order) -> (kstar, idcut).
Rows whose prefix exceeds CAP (a nucleus of thousands of tokens on a flat row, top_k > CAP) fall
back to a per-row bisection over keys (up to ~70 passes; counted in `passes`).
Race pass: Philox uniforms (tl.philox, bit-identical to philox.py) only in tiles that can hold
the winner, per-chunk best and log-sum-exp of the kept s; a per-row reduce in chunk order picks
the winner (lowest id on ties, like torch.argmax) and gathers logp_theta, logp_t, logq.
Not for: the alpha solve and statistics (triton_step.py).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_parts import chunk_vec, factors, load2, lse_step, mix_logit

NPIV = 32     # thresholds per count pass
CAP = 2048    # candidates the select program sorts
BIG = tl.constexpr(2**40)   # "no id cut"


@triton.jit
def _fkey(s):
    """Monotone int64 key of fp32 values (-0.0 folded onto +0.0)."""
    bits = (s + 0.0).to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)


@triton.jit
def _scores(xp_ptr, xt_ptr, sp, st, row, cols, V, lse_p, lse_t, a, log_z, temp):
    """lp, lt, logq and s = logq / T of one tile (fp32; -inf past V); the same rounding in every pass."""
    xp, xt = load2(xp_ptr, xt_ptr, row, sp, st, cols, V)
    lp = xp - lse_p
    lt = xt - lse_t
    logq = mix_logit(a, lp, lt) - log_z
    return lp, lt, logq, tl.math.div_rn(logq, tl.where(temp > 0, temp, 1.0))


@triton.jit
def _row_consts(rowc_ptr, out_ptr, row, B):
    """lse_p, lse_t, a, log_z of a row (written by triton_step's launches)."""
    return (tl.load(rowc_ptr + row * 8), tl.load(rowc_ptr + row * 8 + 1), tl.load(out_ptr + 4 * B + row),
            tl.load(out_ptr + 5 * B + row))


@triton.jit
def _params(out_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, B):
    """temp, top_k, top_p, s_max, min-p floor key, whether a top-k / top-p search is needed."""
    temp = tl.load(temp_ptr + row).to(tl.float32)
    top_k = tl.load(topk_ptr + row)
    top_p = tl.load(topp_ptr + row).to(tl.float32)
    min_p = tl.load(minp_ptr + row).to(tl.float32)
    logq_max = tl.load(out_ptr + 14 * B + row) - tl.load(out_ptr + 5 * B + row)
    smax = tl.math.div_rn(logq_max, tl.where(temp > 0, temp, 1.0))
    floor = _fkey(tl.cast(float("-inf"), tl.float32)) + 1  # -inf tokens are never kept
    if min_p > 0:
        floor = tl.maximum(floor, _fkey(smax + tl.log(min_p)))
    search = (temp > 0) & ((top_k > 0) | (top_p < 1.0))
    return temp, top_k, top_p, smax, floor, search


@triton.jit
def _pivots(smax, floor, NP: tl.constexpr):
    """(NP,) threshold keys, highest first: s_max, s_max - 2^((j-12)/2) for j = 1..NP-2, the floor."""
    j = tl.arange(0, NP)
    delta = tl.where(j == 0, 0.0, tl.exp2((j.to(tl.float32) - 12.0) * 0.5))
    piv = tl.maximum(_fkey(smax - delta), floor)
    return tl.where(j == NP - 1, floor, piv)


@triton.jit
def _trunc_count(xp_ptr, xt_ptr, sp, st, rowc_ptr, out_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr,
                 cnt_ptr, mass_ptr, B, V, NS, CHUNK: tl.constexpr, TB: tl.constexpr, NP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1)
    temp, top_k, top_p, smax, floor, search = _params(out_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, B)
    if search:
        lse_p, lse_t, a, log_z = _row_consts(rowc_ptr, out_ptr, row, B)
        piv = _pivots(smax, floor, NP)
        offs = tl.arange(0, TB)
        cnt = tl.zeros([NP], tl.int32)
        mass = tl.zeros([NP], tl.float32)
        for t in range(0, CHUNK, TB):
            _lp, _lt, _q, s = _scores(xp_ptr, xt_ptr, sp, st, row, ch * CHUNK + t + offs, V, lse_p, lse_t, a,
                                      log_z, temp)
            k = _fkey(s)
            w = tl.where(s > float("-inf"), tl.exp(s - smax), 0.0)
            above = k[:, None] >= piv[None, :]  # (TB, NP)
            cnt += tl.sum(above.to(tl.int32), 0)
            mass += tl.sum(tl.where(above, w[:, None], 0.0), 0)
        j = tl.arange(0, NP)
        base = (row * NS + ch) * NP
        tl.store(cnt_ptr + base + j, cnt)
        tl.store(mass_ptr + base + j, mass)


@triton.jit
def _trunc_plan(out_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, cnt_ptr, mass_ptr, plan_ptr, off_ptr,
                B, NS, NP: tl.constexpr, NSP: tl.constexpr, CAP_: tl.constexpr):
    """plan: mode (0 none, 1 gather, 2 fallback), threshold key, candidates, total mass, pivot j."""
    row = tl.program_id(0).to(tl.int64)
    temp, top_k, top_p, smax, floor, search = _params(out_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, B)
    mode = tl.cast(0, tl.int64)
    thr = floor
    ncand = tl.cast(0, tl.int64)
    total = tl.cast(0.0, tl.float32)
    jstar = tl.cast(NP - 1, tl.int64)
    if search:
        c = tl.arange(0, NSP)
        j = tl.arange(0, NP)
        idx = (row * NS + c[:, None]) * NP + j[None, :]
        ok = (c[:, None] < NS) & (j[None, :] < NP)
        cnt = tl.load(cnt_ptr + idx, mask=ok, other=0)      # (NSP, NP)
        mass = tl.sum(tl.load(mass_ptr + idx, mask=ok, other=0.0), 0)
        tot_cnt = tl.sum(cnt, 0)
        total = tl.sum(tl.where(j == NP - 1, mass, 0.0), 0)
        never = j < 0  # (scalar & vector does not broadcast in the interpreter: where instead)
        # with top-k the prefix must hold the whole top-k set (top-p renormalises on it)
        by_p = tl.where(top_p < 1.0, mass >= top_p * total * 1.0001, never)
        enough = (j == NP - 1) | tl.where(top_k > 0, tot_cnt.to(tl.int64) >= top_k, by_p)
        jstar = tl.min(tl.where(enough, j, NP), 0).to(tl.int64)
        ncand = tl.sum(tl.where(j == jstar, tot_cnt, 0), 0).to(tl.int64)
        thr = tl.sum(tl.where(j == jstar, _pivots(smax, floor, NP), 0), 0)
        mode = tl.where(ncand <= CAP_, 1, 2).to(tl.int64)
        per_chunk = tl.sum(tl.where(j[None, :] == jstar, cnt, 0), 1)  # (NSP,)
        tl.store(off_ptr + row * NS + c, tl.cumsum(per_chunk, 0) - per_chunk, mask=c < NS)
    p = plan_ptr + row * 8
    tl.store(p + 0, mode)
    tl.store(p + 1, thr)
    tl.store(p + 2, ncand)
    tl.store(p + 3, total.to(tl.int32, bitcast=True).to(tl.int64))
    tl.store(p + 4, jstar)
    tl.store(p + 5, floor)
    tl.store(p + 6, tl.cast(BIG, tl.int64))
    tl.store(p + 7, tl.cast(0, tl.int64))


@triton.jit
def _trunc_gather(xp_ptr, xt_ptr, sp, st, rowc_ptr, out_ptr, temp_ptr, plan_ptr, off_ptr, cs_ptr, cid_ptr,
                  B, V, NS, CHUNK: tl.constexpr, BLOCK: tl.constexpr, CAP_: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1)
    if tl.load(plan_ptr + row * 8) == 1:
        thr = tl.load(plan_ptr + row * 8 + 1)
        temp = tl.load(temp_ptr + row).to(tl.float32)
        lse_p, lse_t, a, log_z = _row_consts(rowc_ptr, out_ptr, row, B)
        base = tl.load(off_ptr + row * NS + ch)
        offs = tl.arange(0, BLOCK)
        for t in range(0, CHUNK, BLOCK):
            cols = ch * CHUNK + t + offs
            _lp, _lt, _q, s = _scores(xp_ptr, xt_ptr, sp, st, row, cols, V, lse_p, lse_t, a, log_z, temp)
            sel = (cols < V) & (_fkey(s) >= thr)
            rank = tl.cumsum(sel.to(tl.int64), 0) - sel.to(tl.int64) + base
            dst = row * CAP_ + rank
            tl.store(cs_ptr + dst, s, mask=sel)
            tl.store(cid_ptr + dst, cols, mask=sel)
            base += tl.sum(sel.to(tl.int64), 0)


@triton.jit
def _cand(cs_ptr, cid_ptr, row, idx, n, CAP_: tl.constexpr):
    """Candidates idx as one int64 each, larger = earlier in (-s, id); their s."""
    valid = idx < n
    s = tl.load(cs_ptr + row * CAP_ + idx, mask=valid, other=float("-inf"))
    ids = tl.load(cid_ptr + row * CAP_ + idx, mask=valid, other=0).to(tl.int64)
    pad = _fkey(tl.cast(float("-inf"), tl.float32)) << 32  # below every finite candidate
    return tl.where(valid, (_fkey(s) << 32) | (0xFFFFFFFF - ids), pad), s, valid


@triton.jit
def _ahead(cs_ptr, cid_ptr, row, n, ci, smax, TJ: tl.constexpr, CAP_: tl.constexpr):
    """For each candidate of the tile ci: how many candidates come before it in (-s, id) and
    their mass sum exp(s - smax). All pairs (no sort): O(n^2) compares, n <= CAP."""
    rank = tl.zeros(ci.shape, tl.int32)
    mass = tl.zeros(ci.shape, tl.float32)
    for j0 in range(0, n, TJ):
        cj, sj, vj = _cand(cs_ptr, cid_ptr, row, j0 + tl.arange(0, TJ), n, CAP_)
        wj = tl.where(vj, tl.exp(sj - smax), 0.0)
        gt = cj[None, :] > ci[:, None]
        rank += tl.sum(gt.to(tl.int32), 1)
        mass += tl.sum(tl.where(gt, wj[None, :], 0.0), 1)
    return rank, mass


@triton.jit
def _trunc_select(out_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, plan_ptr, cs_ptr, cid_ptr, B,
                  CAP_: tl.constexpr, NP: tl.constexpr, TI: tl.constexpr):
    """Exact top-k -> top-p on the gathered candidates (ranks and mass-before by counting pairs,
    as a sort + cumsum would give them); writes (kstar, idcut) into the plan."""
    row = tl.program_id(0).to(tl.int64)
    p = plan_ptr + row * 8
    if tl.load(p) == 1:
        temp, top_k, top_p, smax, floor, search = _params(out_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, B)
        n = tl.load(p + 2)
        total = tl.load(p + 3).to(tl.int32).to(tl.float32, bitcast=True)
        if (top_k > 0) | (tl.load(p + 4) == NP - 1):  # normaliser: the kept candidates' own sum
            total = 0.0
            for i0 in range(0, n, TI):
                ci, si, vi = _cand(cs_ptr, cid_ptr, row, i0 + tl.arange(0, TI), n, CAP_)
                rank, _m = _ahead(cs_ptr, cid_ptr, row, n, ci, smax, TI, CAP_)
                keep = tl.where(top_k > 0, vi & (rank < top_k), vi)
                total += tl.sum(tl.where(keep, tl.exp(si - smax), 0.0), 0)
        last = tl.full([TI], 2**62, tl.int64)  # smallest kept comb = the boundary token
        for i0 in range(0, n, TI):
            ci, si, vi = _cand(cs_ptr, cid_ptr, row, i0 + tl.arange(0, TI), n, CAP_)
            rank, before = _ahead(cs_ptr, cid_ptr, row, n, ci, smax, TI, CAP_)
            keep = tl.where(top_k > 0, vi & (rank < top_k), vi)
            keep = tl.where(top_p < 1.0, keep & (before / total < top_p), keep)
            last = tl.minimum(last, tl.where(keep, ci, 2**62))
        comb = tl.min(last, 0)
        tl.store(p + 5, comb >> 32)
        tl.store(p + 6, 0xFFFFFFFF - (comb & 0xFFFFFFFF))


# ----------------------------------------------------------------------------- fallback: bisection
@triton.jit
def _tally(xp_ptr, xt_ptr, sp, st, row, V, lse_p, lse_t, a, log_z, temp, smax, kstar, idcut, klo, khi, cmax,
           BLOCK: tl.constexpr):
    """One pass: count and mass (sum exp(s - smax)) of kept tokens with klo <= key <= khi, id <= cmax."""
    offs = tl.arange(0, BLOCK)
    cnt = tl.zeros([BLOCK], tl.int32)
    mass = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + offs
        _lp, _lt, _q, s = _scores(xp_ptr, xt_ptr, sp, st, row, cols, V, lse_p, lse_t, a, log_z, temp)
        k = _fkey(s)
        sel = (cols < V) & ((k > kstar) | ((k == kstar) & (cols <= idcut)))
        sel = sel & (k >= klo) & (k <= khi) & (cols <= cmax)
        cnt += sel.to(tl.int32)
        mass += tl.where(sel & (s > float("-inf")), tl.exp(s - smax), 0.0)
    return tl.sum(cnt, 0), tl.sum(mass, 0)


@triton.jit
def _trunc_fallback(xp_ptr, xt_ptr, sp, st, rowc_ptr, out_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr,
                    plan_ptr, B, V, BLOCK: tl.constexpr):
    """Rows whose kept prefix exceeds CAP: top-k then top-p by bisection over keys, ties by a
    bisection over ids (triton_sample's method, s recomputed from the logits). plan[7] = passes."""
    row = tl.program_id(0).to(tl.int64)
    p = plan_ptr + row * 8
    if tl.load(p) == 2:
        temp, top_k, top_p, smax, floor, search = _params(out_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, row, B)
        lse_p, lse_t, a, log_z = _row_consts(rowc_ptr, out_ptr, row, B)
        big = tl.cast(BIG, tl.int64)
        kstar = floor
        idcut = big
        npass = tl.cast(0, tl.int64)
        for crit in tl.static_range(2):  # 0: top-k, 1: top-p
            active = (top_k > 0) if crit == 0 else (top_p < 1.0)
            if active:
                cnt, total = _tally(xp_ptr, xt_ptr, sp, st, row, V, lse_p, lse_t, a, log_z, temp, smax, kstar,
                                    idcut, kstar, big, big, BLOCK)
                npass += 1
                target = top_k.to(tl.float32) if crit == 0 else top_p * total
                go = (top_k < cnt) if crit == 0 else (top_p < 2.0)
                if go:
                    lo = kstar
                    hi = _fkey(smax) + 1
                    while hi - lo > 1:  # largest key k with count (mass) of kept keys >= k >= target
                        mid = lo + (hi - lo) // 2
                        c, m = _tally(xp_ptr, xt_ptr, sp, st, row, V, lse_p, lse_t, a, log_z, temp, smax, kstar,
                                      idcut, mid, big, big, BLOCK)
                        npass += 1
                        ok = (c.to(tl.float32) >= target) if crit == 0 else (m >= target)
                        lo = tl.where(ok, mid, lo)
                        hi = tl.where(ok, hi, mid)
                    kk = lo
                    gt, m_gt = _tally(xp_ptr, xt_ptr, sp, st, row, V, lse_p, lse_t, a, log_z, temp, smax, kstar,
                                      idcut, kk + 1, big, big, BLOCK)
                    eq, m_eq = _tally(xp_ptr, xt_ptr, sp, st, row, V, lse_p, lse_t, a, log_z, temp, smax, kstar,
                                      idcut, kk, kk, big, BLOCK)
                    npass += 2
                    if crit == 0:
                        need = top_k - gt.to(tl.int64)
                    else:  # ties have equal mass w: keep tie j (0-based, by id) while m_gt + j*w < target
                        need = tl.ceil((target - m_gt) / (m_eq / eq.to(tl.float32))).to(tl.int64)
                        need = tl.minimum(tl.maximum(need, 1), eq.to(tl.int64))
                    new_cut = tl.where(kk == kstar, idcut, big)
                    if need < eq:  # smallest id c with #{kept ties, id <= c} >= need
                        clo = tl.cast(-1, tl.int64)
                        chi = tl.cast(V - 1, tl.int64)
                        while chi - clo > 1:
                            cm = clo + (chi - clo) // 2
                            c, _m = _tally(xp_ptr, xt_ptr, sp, st, row, V, lse_p, lse_t, a, log_z, temp, smax,
                                           kstar, idcut, kk, kk, cm, BLOCK)
                            npass += 1
                            clo = tl.where(c >= need, clo, cm)
                            chi = tl.where(c >= need, cm, chi)
                        new_cut = chi
                    kstar = kk
                    idcut = new_cut
        tl.store(p + 5, kstar)
        tl.store(p + 6, idcut)
        tl.store(p + 7, npass)


# ----------------------------------------------------------------------------- race
@triton.jit
def _race_part(xp_ptr, xt_ptr, sp, st, rowc_ptr, out_ptr, temp_ptr, seed_ptr, key_ptr, pos_ptr, plan_ptr,
               rp_ptr, rid_ptr, B, V, NS, span, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """Per chunk: best Gumbel score (greedy: best logq), its id, s, lp, lt, logq; (m, z) of kept s."""
    row = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1)
    temp = tl.load(temp_ptr + row).to(tl.float32)
    lse_p, lse_t, a, log_z = _row_consts(rowc_ptr, out_ptr, row, B)
    smax = tl.math.div_rn(tl.load(out_ptr + 14 * B + row) - log_z, tl.where(temp > 0, temp, 1.0))
    kstar = tl.load(plan_ptr + row * 8 + 5)
    idcut = tl.load(plan_ptr + row * 8 + 6)
    seed = tl.load(seed_ptr + row)
    key = tl.load(key_ptr + row)
    pos = tl.load(pos_ptr + row)
    offs = tl.arange(0, BLOCK)
    zero = tl.zeros([BLOCK], tl.uint32)
    c1 = zero + (pos & 0xFFFFFFFF).to(tl.uint32)
    c2 = zero + (key & 0xFFFFFFFF).to(tl.uint32)
    c3 = zero + ((key >> 32) & 0xFFFFFFFF).to(tl.uint32)
    floor = smax - span
    greedy = temp == 0
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    z = tl.zeros([BLOCK], tl.float32)
    best = tl.cast(float("-inf"), tl.float32)
    best_i = tl.cast(ch * CHUNK, tl.int64)
    b_s, b_lp, b_lt, b_q = best, best, best, best
    for t in range(0, CHUNK, BLOCK):
        cols = ch * CHUNK + t + offs
        lp, lt, logq, s = _scores(xp_ptr, xt_ptr, sp, st, row, cols, V, lse_p, lse_t, a, log_z, temp)
        k = _fkey(s)
        kept = (cols < V) & (s > float("-inf")) & ((k > kstar) | ((k == kstar) & (cols <= idcut)))
        s = tl.where(kept, s, float("-inf"))
        m, z, _c, _w = lse_step(m, z, s)
        score = logq
        if not greedy:
            score = tl.where(kept, s, float("-inf"))
            if tl.max(s, 0) >= floor:  # only tiles that can hold the winner draw noise
                r, _r1, _r2, _r3 = tl.philox(seed, cols.to(tl.uint32), c1, c2, c3)
                u = ((r >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07
                score = tl.where(s >= floor, s + -tl.log(-tl.log(u)), float("-inf"))
            else:
                score = tl.full([BLOCK], float("-inf"), tl.float32)
        bm = tl.max(score, 0)
        bi = tl.argmax(score, 0)
        if bm > best:
            here = offs == bi
            best = bm
            best_i = bi.to(tl.int64) + ch * CHUNK + t
            b_s = tl.sum(tl.where(here, s, 0.0), 0)
            b_lp = tl.sum(tl.where(here, lp, 0.0), 0)
            b_lt = tl.sum(tl.where(here, lt, 0.0), 0)
            b_q = tl.sum(tl.where(here, logq, 0.0), 0)
    M, f = factors(m, 0)
    o = rp_ptr + (row * NS + ch) * 7
    tl.store(o + 0, best)
    tl.store(o + 1, b_s)
    tl.store(o + 2, b_lp)
    tl.store(o + 3, b_lt)
    tl.store(o + 4, b_q)
    tl.store(o + 5, M)
    tl.store(o + 6, tl.sum(z * f, 0))
    tl.store(rid_ptr + row * NS + ch, best_i)


@triton.jit(do_not_specialize=["SEARCHED"])  # runtime flags: one compiled variant
def _race_reduce(rp_ptr, rid_ptr, out_ptr, tok_ptr, temp_ptr, plan_ptr, fin_ptr, pass_ptr, B, NS, SEARCHED,
                 NSP: tl.constexpr):
    """The winner over chunks (the first chunk on ties: lowest id), logp_behavior, passes."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, NSP)
    best = chunk_vec(rp_ptr, row, NS, 0, 7, NSP, float("-inf"))
    w = tl.argmax(best, 0)
    here = c == w
    tok = tl.sum(tl.where(here, tl.load(rid_ptr + row * NS + c, mask=c < NS, other=0), 0), 0)
    M, f = factors(chunk_vec(rp_ptr, row, NS, 5, 7, NSP, float("-inf")), 0)
    lse = M + tl.log(tl.sum(chunk_vec(rp_ptr, row, NS, 6, 7, NSP, 0.0) * f, 0))
    s_best = tl.sum(tl.where(here, chunk_vec(rp_ptr, row, NS, 1, 7, NSP, 0.0), 0.0), 0)
    greedy = tl.load(temp_ptr + row) == 0
    tl.store(tok_ptr + row, tok)
    for k in tl.static_range(3):
        tl.store(out_ptr + k * B + row, tl.sum(tl.where(here, chunk_vec(rp_ptr, row, NS, 2 + k, 7, NSP, 0.0), 0.0), 0))
    tl.store(out_ptr + 3 * B + row, tl.where(greedy, 0.0, s_best - lse))
    # passes over the two rows: model + Newton evaluations + stats + truncation + race
    mode = tl.load(plan_ptr + row * 8)
    trunc = tl.where(mode == 1, 2, tl.where(mode == 2, 1 + tl.load(plan_ptr + row * 8 + 7), 0))
    trunc = tl.where(SEARCHED != 0, trunc, 0)
    tl.store(pass_ptr + row, (3 + tl.load(fin_ptr + row * 6 + 5).to(tl.int64) + trunc).to(tl.int32))
