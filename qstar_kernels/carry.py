"""Carry a teacher's next-token log-probs onto the policy's vocabulary (cross-tokenizer mode).

With an index table `index` (Vt,) mapping each teacher token id to one policy id (built once per
pair by engine/cross_tokenizer.py), the carried distribution is

    log π̃_t(y) = logsumexp_{τ : index[τ] = y} log π_t(τ)          (−inf when no τ maps to y)

over the policy's W columns: a proper distribution (it sums to 1) that keeps all of π_t's mass.
`carry` is one masked log-softmax plus one scatter-sum (float64) per step on the device; `carry_ref`
is the float64 brute force it is tested against. Teacher columns at or beyond `n_real` (padded
embedding rows) get no mass. Policy ids that receive no mass are −inf: the mixture treats them
like masked vocabulary (q gives them 0 unless a = 1, where q = π_θ), with `where`, never NaN
(tests/test_cross_tokenizer.py runs every alpha method and control on carried rows).
Not for: building the table (engine/cross_tokenizer.py) or the mixture itself (api.py).
"""
from __future__ import annotations

import torch

from .ref_mix import log_softmax_masked


def carry_table(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(compact (Vt,), targets (R,)): the θ ids that receive mass at all, sorted, and each teacher
    id's position among them — built once, so the per-step sum and log touch R columns, not W."""
    targets, compact = torch.unique(index, sorted=True, return_inverse=True)
    return compact, targets


def carry(logits_t: torch.Tensor, index: torch.Tensor, width: int, n_real: int | None = None,
          targets: torch.Tensor | None = None) -> torch.Tensor:
    """(B, width) log π̃_t from teacher logits (B, Vt >= len(index)) and index (Vt',) int64 in
    [0, width) — or, with `targets` from carry_table, the compact index. Columns of logits_t
    beyond len(index) or n_real carry nothing.

    One index_add_ of exp(lt − row max) in float64 (a scatter-logsumexp whose terms cannot
    underflow for log-probs above about −700; below that a term counts as 0), then the log:
    a θ id with no preimage gets log 0 = −inf, never NaN. On CUDA the float64 atomics make the
    sum order free: results agree to ~1e-16 relative."""
    Vt = index.shape[0]
    n_real = Vt if n_real is None else min(n_real, Vt)
    lt = log_softmax_masked(logits_t[:, :Vt], n_real)  # (B, Vt) fp32+, padding columns -inf
    top = lt.amax(-1, keepdim=True)  # (B, 1), finite: every row has real columns
    terms = torch.exp((lt - top).double())  # (B, Vt) in [0, 1]
    R = width if targets is None else targets.shape[0]
    acc = torch.zeros(lt.shape[0], R, dtype=torch.float64, device=lt.device).index_add_(1, index, terms)
    vals = (torch.log(acc) + top.double()).to(lt.dtype)  # (B, R)
    if targets is None:
        return vals
    out = torch.full((lt.shape[0], width), float("-inf"), dtype=lt.dtype, device=lt.device)
    return out.index_copy_(1, targets, vals)  # (B, W)


def carry_ref(logits_t: torch.Tensor, index, width: int, n_real: int | None = None) -> torch.Tensor:
    """The float64 brute force of `carry`: for each policy id y, logsumexp over its preimages."""
    index = [int(i) for i in index]
    n_real = len(index) if n_real is None else min(n_real, len(index))
    lt = torch.log_softmax(logits_t[:, :n_real].double(), -1)  # (B, n_real)
    out = torch.full((lt.shape[0], width), float("-inf"), dtype=torch.float64)
    for y in range(width):
        pre = [tau for tau in range(n_real) if index[tau] == y]
        if pre:
            out[:, y] = torch.logsumexp(lt[:, pre], -1)
    return out
