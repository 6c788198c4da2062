"""Speculative verification: draft K tokens from d, keep them under b, emit exactly b-distributed tokens.

Per row and round (b = the behaviour distribution qstar samples from, d = the distribution the
draft token was actually drawn from, both normalised (B, V) log-probs):
accept x_i with probability min(1, b_i(x_i) / d_i(x_i)); at the first rejection draw from
norm(max(0, b_i - d_i)) and stop; when all K are accepted draw the bonus token from b_{K+1}.
Underflow rule: when sum max(0, b_i - d_i) is 0 in the working dtype (b ~ d to rounding) the
correction draws from b_i itself.

Randomness: every draw depends only on (seed, key, absolute position, stream) with stream in
{DRAFT, ACCEPT, CORRECT} carried in the high bits of Philox's position word (positions must be
< 2**30); the bonus token uses CORRECT. `behaviour_mixture` is the one definition of b (mix +
the sampler's truncation, the same functions `step` uses); `draft` computes d by the same code
with the mixture weight on the draft model alone (a = 1 for pi_theta, a = 0 for pi_t).
`verify_reference` is the float64 per-row spec; `verify` the vectorised torch path (no host
sync), tested equal.
Not for: running models, caches or rolling positions back (engine/speculative.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch

from . import checks, philox
from .api import mix
from .ref_sample import NEG_INF, behaviour_logprobs, race

DRAFT, ACCEPT, CORRECT = 1, 2, 3  # Philox stream words (plain sampling is stream 0)
STREAM_SHIFT = 30


def stream_positions(positions: torch.Tensor, stream: int) -> torch.Tensor:
    """The Philox position word of `stream` at absolute positions (int64, < 2**30)."""
    return positions + (stream << STREAM_SHIFT)


@dataclass
class Verified:
    n_accepted: torch.Tensor     # (B,) int64 in [0, K]: accepted draft tokens
    tokens: torch.Tensor         # (B, K + 1): x_1..x_n, then the corrected / bonus token at n
    logp_behavior: torch.Tensor  # (B, K + 1): log b_i(tokens_i) (entries past n are unused)
    drafted: torch.Tensor        # (B, K + 1) bool: an accepted draft token (i < n)


def behaviour_mixture(logits_theta, logits_t, method, *, temperature, top_k, top_p, min_p, **mix_kw):
    """(Mixture, (B, V) log b): q from `mix` (alpha solved, controls, forced tokens), then the
    sampler's temperature -> min-p -> top-k -> top-p. mix_kw: `mix`'s keywords."""
    m = mix(logits_theta, logits_t, method, validate=False, **mix_kw)
    args = checks.check_sample_args(m.logq, temperature, top_k, top_p, min_p, 0, 0, 0, False)
    return m, behaviour_logprobs(m.logq, *args[:4])


def draft(logits, side: int, *, vocab_size, temperature, top_k, top_p, min_p, seeds, keys, positions,
          backend=None):
    """Draft tokens (B,) from d and log d (B, V): b's code with all weight on the draft model
    (side 0 = pi_theta: a = 1; side 1 = pi_t: a = 0), no controls; stream DRAFT at `positions`."""
    _, logd = behaviour_mixture(logits, logits, "fixed", alpha=1.0 - side, vocab_size=vocab_size,
                                temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                backend=backend)
    return race(logd, seeds, keys, stream_positions(positions, DRAFT)), logd


def residual_scores(logb: torch.Tensor, logd: torch.Tensor) -> torch.Tensor:  # (B, V)
    """log max(0, b - d) (unnormalised: the race needs no normaliser); rows whose residual mass
    is 0 in this dtype (b ~ d) fall back to log b."""
    res = (logb.exp() - logd.exp()).clamp_min(0)
    return torch.where((res.sum(-1) == 0)[:, None], logb, res.log())


def accept_uniforms(seeds, keys, positions, K: int) -> torch.Tensor:  # (B, K) fp32
    pos = positions[:, None] + torch.arange(K, device=positions.device)[None, :]
    return philox.uniform(seeds[:, None], keys[:, None], stream_positions(pos, ACCEPT), torch.zeros_like(pos))


def verify(logb, logd, drafts, seeds, keys, positions) -> Verified:
    """logb (B, K+1, V), logd (B, K, V) log-probs; drafts (B, K) drawn from d; seeds, keys,
    positions (B,) int64, positions = the absolute position of x_1. No host sync."""
    B, K1, V = logb.shape
    K = K1 - 1
    ar = torch.arange(B, device=logb.device)
    lb = logb[:, :K].gather(2, drafts[..., None])[..., 0]  # (B, K)
    ld = logd.gather(2, drafts[..., None])[..., 0]
    u = accept_uniforms(seeds, keys, positions, K).to(logb.dtype)
    ok = torch.log(u) < lb - ld  # u < min(1, b/d); lb = -inf never accepts
    n_acc = ok.to(torch.int64).cumprod(1).sum(1)  # (B,)
    at = n_acc.clamp(max=K - 1)
    target = torch.where((n_acc == K)[:, None], logb[:, K], residual_scores(logb[ar, at], logd[ar, at]))
    final = race(target, seeds, keys, stream_positions(positions + n_acc, CORRECT))
    tokens = torch.cat([drafts, drafts[:, :1]], 1).scatter(1, n_acc[:, None], final[:, None])
    lpb = logb.gather(2, tokens[..., None])[..., 0]
    drafted = torch.arange(K1, device=logb.device)[None, :] < n_acc[:, None]
    return Verified(n_accepted=n_acc, tokens=tokens, logp_behavior=lpb, drafted=drafted)


def verify_reference(logb, logd, drafts, seeds, keys, positions) -> Verified:
    """The spec, one row and one position at a time in float64 (same uniforms and races)."""
    logb, logd = logb.double(), logd.double()
    B, K1, V = logb.shape
    K = K1 - 1
    n_out, tok_out, lpb_out = [], [], []
    for r in range(B):
        s, k, p0 = seeds[r:r + 1], keys[r:r + 1], int(positions[r])
        toks = []
        for i in range(K):
            x = int(drafts[r, i])
            u = float(philox.uniform(s, k, stream_positions(torch.tensor([p0 + i]), ACCEPT), torch.tensor([0])))
            ratio = math.exp(min(0.0, float(logb[r, i, x] - logd[r, i, x])))
            if u < ratio:
                toks.append(x)
                continue
            res = (logb[r, i].exp() - logd[r, i].exp()).clamp_min(0)
            target = logb[r, i] if float(res.sum()) == 0 else torch.where(res > 0, res.log(), NEG_INF)
            break
        else:
            target = logb[r, K]
        n = len(toks)
        toks.append(int(race(target[None], s, k, stream_positions(torch.tensor([p0 + n]), CORRECT))[0]))
        toks += [toks[0]] * (K1 - len(toks))
        n_out.append(n)
        tok_out.append(toks)
        lpb_out.append([float(logb[r, i, t]) for i, t in enumerate(toks)])
    n_acc = torch.tensor(n_out, dtype=torch.int64)
    tokens = torch.tensor(tok_out, dtype=torch.int64)
    drafted = torch.arange(K1)[None, :] < n_acc[:, None]
    return Verified(n_accepted=n_acc, tokens=tokens, logp_behavior=torch.tensor(lpb_out, dtype=torch.float64),
                    drafted=drafted)
