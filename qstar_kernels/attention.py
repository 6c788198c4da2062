"""Decode attention on a slot KV cache: each query row reads only its own slot's live positions.

    out = decode_attention(q, k_cache, v_cache, slots, lengths, scale)

q (N, H, D) is one query token per row (an extend of T tokens flattens to N = B*T rows, each with
its own length); k_cache / v_cache (S, Hkv, L, D) are one layer's cache; row n attends to
positions [0, lengths[n]) of slot slots[n]. GQA: query head h reads kv head h // (H / Hkv), with
no copy of K/V per query head. On CUDA the Triton kernel (triton_attention.py) reads only those
positions: no gather of the cache, no mask tensor, and no host sync (capture-safe). Elsewhere the
PyTorch reference below runs (the spec the kernel is tested against): a gather of the first
`span` positions of each row's slot and a masked SDPA.
Not for: prefill from position 0 (a causal SDPA over the new tokens, which flash attention takes)
or anything about models (engine/slot_model.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def decode_attention_reference(q, k_cache, v_cache, slots, lengths, scale: float,
                               span: int | None = None, first: int | None = None) -> torch.Tensor:  # (N, H, D)
    """The definition. span (a Python int >= max(lengths)): how many cache positions to gather
    (default all L; the CPU engine passes its host-known bound, rounded up). first: the caller
    knows slots == first, first + 1, ... (a Python int): K/V are then views, not a gather copy
    (3x faster on CPU)."""
    L, N = k_cache.shape[2], q.shape[0]
    span = L if span is None else min(int(span), L)
    if first is not None:
        K, V = k_cache[first:first + N, :, :span], v_cache[first:first + N, :, :span]  # (N, Hkv, span, D)
    else:
        K, V = k_cache[slots, :, :span], v_cache[slots, :, :span]
    live = torch.arange(span, device=q.device)[None, :] < lengths[:, None]  # (N, span)
    out = F.scaled_dot_product_attention(q[:, :, None], K, V, attn_mask=live[:, None, None, :], scale=scale,
                                         enable_gqa=True)
    return out[:, :, 0]


def decode_attention(q, k_cache, v_cache, slots, lengths, scale: float, *, span: int | None = None,
                     first: int | None = None, backend: str | None = None) -> torch.Tensor:  # (N, H, D)
    """Triton on CUDA (backend None or "triton"; "torch" forces the reference), else the reference
    (span, first: its host-side hints)."""
    if backend != "torch" and (q.is_cuda or backend == "triton"):
        from .triton_attention import decode_attention_triton

        return decode_attention_triton(q, k_cache, v_cache, slots, lengths, scale)
    return decode_attention_reference(q, k_cache, v_cache, slots, lengths, scale, span, first)
