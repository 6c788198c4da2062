"""PyTorch reference sampler: truncation of q, then a counter-based Gumbel race.

Order (as vLLM): temperature -> min-p -> top-k -> top-p, all on q after alpha is solved.
top-p keeps the smallest set of most likely tokens whose mass reaches p (ties by token id);
every truncation keeps a prefix of the order (-s, id), so they compose. The race
argmax_y (s_y + G_y) runs only on tokens with s_y >= max s - GUMBEL_SPAN: any other token
loses to the argmax whatever the noise (G lies in [G_MIN, G_MAX]), so pruning is exact.
Not for: computing q (ref_mix.py).
"""
from __future__ import annotations

import torch

from . import philox

NEG_INF = float("-inf")
GUMBEL_SPAN = philox.G_MAX - philox.G_MIN + 0.5  # margin for fp32 rounding


def truncation_keep(s, top_k, top_p, min_p):  # (B, V) bool, or None when no row truncates
    active = (top_k > 0) | (top_p < 1) | (min_p > 0)
    if not bool(active.any()):
        return None
    return prefix_keep(s, top_k, top_p, min_p)


def prefix_keep(s, top_k, top_p, min_p):  # (B, V) bool; device ops only (no host sync)
    """min-p -> top-k -> top-p on the scores s (any shift of log-probs), each a prefix of (-s, id)."""
    s_sorted, idx = torch.sort(s, dim=-1, descending=True, stable=True)
    rank = torch.arange(s.shape[1], device=s.device)
    floor = s_sorted[:, :1] + torch.log(min_p)[:, None]  # p >= min_p * p_max
    keep = (min_p[:, None] <= 0) | (s_sorted >= floor)
    keep &= (top_k[:, None] <= 0) | (rank[None, :] < top_k[:, None])
    probs = torch.softmax(torch.where(keep, s_sorted, NEG_INF), dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass strictly before this rank
    keep &= (top_p[:, None] >= 1) | (before < top_p[:, None])
    return torch.zeros_like(keep).scatter_(1, idx, keep)


def behaviour_scores(logq, temperature, top_k, top_p, min_p):  # (B, V)
    """logq / temperature (1 where greedy) with min-p -> top-k -> top-p applied (-inf outside):
    log-probs of the behaviour distribution up to a per-row shift. The one definition of the
    truncation, shared by `sample_reference`, `behaviour_logprobs` and speculative verification."""
    greedy = temperature == 0
    s = logq / torch.where(greedy, 1, temperature).to(logq.dtype)[:, None]  # (B, V)
    keep = truncation_keep(s, top_k, top_p, min_p)
    return s if keep is None else torch.where(keep, s, NEG_INF)


def behaviour_logprobs(logq, temperature, top_k, top_p, min_p):  # (B, V)
    """Normalised log-probs of the distribution `sample_reference` draws from; greedy rows
    (temperature 0) are the point mass on the argmax of logq."""
    out = torch.log_softmax(behaviour_scores(logq, temperature, top_k, top_p, min_p), -1)
    point = torch.full_like(out, NEG_INF).scatter_(1, logq.argmax(-1, keepdim=True), 0.0)
    return torch.where((temperature == 0)[:, None], point, out)


def race(s, seeds, keys, positions):  # (B,) int64
    """argmax_y (s_y + Gumbel(seed, key, position, y)): one draw from softmax(s) per row; only
    tokens within GUMBEL_SPAN of the row max race (exact: the others cannot win)."""
    cand = s >= (s.amax(-1) - GUMBEL_SPAN)[:, None]
    rows, cols = cand.nonzero(as_tuple=True)
    noise = philox.gumbel(seeds[rows], keys[rows], positions[rows], cols)
    score = torch.full_like(s, NEG_INF)
    score[rows, cols] = s[rows, cols] + noise.to(s.dtype)
    return score.argmax(-1)


def sample_reference(logq, temperature, top_k, top_p, min_p, seeds, keys, positions):
    """tokens (B,), logp_behavior (B,) (arguments already validated, all (B,) tensors)."""
    greedy = temperature == 0
    s = behaviour_scores(logq, temperature, top_k, top_p, min_p)
    lse = torch.logsumexp(s, dim=-1)
    tokens = torch.where(greedy, logq.argmax(-1), race(s, seeds, keys, positions))
    lpb = s.gather(1, tokens[:, None]).squeeze(1) - lse
    return tokens, torch.where(greedy, torch.zeros_like(lpb), lpb)
