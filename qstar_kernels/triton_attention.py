"""Triton decode attention on a slot KV cache (flash-decoding: split along the sequence, then reduce).

Launch 1, grid (N, Hkv, NSPLIT): program (n, kv head, split) loads the G = H / Hkv query heads that
share the kv head (GQA without repeating K/V), walks its split's positions of slot slots[n] below
lengths[n] in tiles of BLOCK_N with an online softmax (fp32 state), and writes a partial output
and its log-sum-exp. Splits past a row's length do no loads and write lse = -inf. Launch 2, grid
(N, H): combines a row's splits in a fixed order. The split size depends only on the cache length
L, so a row's result does not depend on the batch it is in. Dot products run in fp32 with IEEE
precision (no TF32); bf16 / fp16 inputs are multiplied in their dtype with fp32 accumulation
(under TRITON_INTERPRET=1 they are upcast first: the interpreter's bf16 tl.dot returns garbage).
No host sync: every shape and grid is fixed by (N, H, Hkv, L, D), so a CUDA graph can hold it.
Not for: prefill from position 0 (causal SDPA), CPU without TRITON_INTERPRET=1 (attention.py's
reference runs there).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def split_size(L: int) -> int:
    """Positions per split: a power of two in [64, 1024] (a multiple of every BLOCK_N), ~32 splits
    at most; a function of L only, so a row's result does not depend on the batch."""
    return max(64, min(1024, triton.next_power_of_2(triton.cdiv(L, 32))))


@triton.jit
def _attn_split(q_ptr, k_ptr, v_ptr, slot_ptr, len_ptr, o_ptr, lse_ptr,
                sq_n, sq_h, sk_s, sk_h, sk_l, sv_s, sv_h, sv_l, H, NS, chunk, scale,
                G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr):
    n = tl.program_id(0)
    hk = tl.program_id(1)
    sp = tl.program_id(2)
    slot = tl.load(slot_ptr + n).to(tl.int64)
    length = tl.load(len_ptr + n).to(tl.int32)
    lo = sp * chunk
    hi = tl.minimum(lo + chunk, length)
    g = tl.arange(0, GP)
    d = tl.arange(0, DP)
    gm, dm = g < G, d < D
    h = hk * G + g
    q = tl.load(q_ptr + n.to(tl.int64) * sq_n + h[:, None] * sq_h + d[None, :],
                mask=gm[:, None] & dm[None, :], other=0.0)  # (GP, DP)
    if DOT_F32:
        q = q.to(tl.float32)
    kbase = k_ptr + slot * sk_s + hk.to(tl.int64) * sk_h
    vbase = v_ptr + slot * sv_s + hk.to(tl.int64) * sv_h
    m_i = tl.full([GP], float("-inf"), tl.float32)
    l_i = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, DP], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        jm = j < hi
        kv_mask = jm[:, None] & dm[None, :]
        k = tl.load(kbase + j[:, None].to(tl.int64) * sk_l + d[None, :], mask=kv_mask, other=0.0)  # (BN, DP)
        if DOT_F32:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # (GP, BN) fp32
        s = tl.where(jm[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: start < hi, so position `start` is live
        corr = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * corr + tl.sum(p, 1)
        v = tl.load(vbase + j[:, None].to(tl.int64) * sv_l + d[None, :], mask=kv_mask, other=0.0)
        if DOT_F32:
            v = v.to(tl.float32)
        acc = acc * corr[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
    live = l_i > 0
    out = acc / tl.where(live, l_i, 1.0)[:, None]
    lse = tl.where(live, m_i + tl.log(tl.where(live, l_i, 1.0)), float("-inf"))
    row = (n.to(tl.int64) * H + h) * NS + sp  # (GP,) index into (N, H, NS)
    tl.store(lse_ptr + row, lse, mask=gm)
    tl.store(o_ptr + row[:, None] * D + d[None, :], out, mask=gm[:, None] & dm[None, :])


@triton.jit
def _attn_reduce(o_ptr, lse_ptr, out_ptr, so_n, so_h, H, NS,
                 D: tl.constexpr, DP: tl.constexpr, NSP: tl.constexpr):
    n = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, NSP)
    d = tl.arange(0, DP)
    base = (n.to(tl.int64) * H + h) * NS
    lse = tl.load(lse_ptr + base + s, mask=s < NS, other=float("-inf"))
    m = tl.max(lse, 0)  # finite: a row has length >= 1, so split 0 is live
    w = tl.where(lse > float("-inf"), tl.exp(lse - m), 0.0)
    o = tl.load(o_ptr + (base + s)[:, None] * D + d[None, :], mask=(s < NS)[:, None] & (d < D)[None, :],
                other=0.0)
    out = tl.sum(w[:, None] * o, 0) / tl.sum(w, 0)
    tl.store(out_ptr + n.to(tl.int64) * so_n + h * so_h + d, out.to(out_ptr.dtype.element_ty), mask=d < D)


def config(H: int, Hkv: int, D: int, dtype: torch.dtype) -> tuple[dict, int]:
    """(compile-time constants, num_warps) of the split kernel: tl.dot needs dims >= 16; tiles are
    sized so that sm_80 / sm_90 compile without register spills (tests/test_compile_attention.py)."""
    G = H // Hkv
    DP = max(16, triton.next_power_of_2(D))
    f32 = dtype == torch.float32
    consts = dict(G=G, GP=max(16, triton.next_power_of_2(G)), D=D, DP=DP, BLOCK_N=64 if DP <= 64 else 32,
                  DOT_F32=f32 or os.environ.get("TRITON_INTERPRET") == "1")
    return consts, 8 if f32 and DP >= 128 else 4


def decode_attention_triton(q, k_cache, v_cache, slots, lengths, scale: float) -> torch.Tensor:
    """(N, H, D) in q's dtype; shapes as attention.decode_attention (last dims contiguous)."""
    N, H, D = q.shape
    S, Hkv, L, _ = k_cache.shape
    if H % Hkv or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError(f"need H % Hkv == 0 and contiguous head_dim, got H={H}, Hkv={Hkv}")
    q = q if q.stride(-1) == 1 else q.contiguous()
    chunk = split_size(L)
    NS = triton.cdiv(L, chunk)
    part = torch.empty((N, H, NS, D), dtype=torch.float32, device=q.device)
    lse = torch.empty((N, H, NS), dtype=torch.float32, device=q.device)
    consts, warps = config(H, Hkv, D, q.dtype)
    _attn_split[(N, Hkv, NS)](q, k_cache, v_cache, slots, lengths, part, lse, q.stride(0), q.stride(1),
                              *k_cache.stride()[:3], *v_cache.stride()[:3], H, NS, chunk, float(scale),
                              **consts, num_warps=warps)
    out = torch.empty((N, H, D), dtype=q.dtype, device=q.device)
    _attn_reduce[(N, H)](part, lse, out, out.stride(0), out.stride(1), H, NS, D=D,
                         DP=max(16, triton.next_power_of_2(D)), NSP=max(2, triton.next_power_of_2(NS)),
                         num_warps=4)
    return out
