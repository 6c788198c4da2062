"""PyTorch reference of the mixture math: the spec every other backend must match.

    log q_a = a*logp_theta + (1-a)*logp_t - log Z(a)      (a = weight on pi_theta)

Runs on any device and in float64 when given float64. Zero-probability tokens (-inf log-probs,
masked vocab padding) are handled with `where`, never with arithmetic on -inf, so no NaN
appears. Not for: speed on GPU (see triton_mix.py) or sampling (ref_sample.py).
"""
from __future__ import annotations

import torch

from . import ref_solve
from .types import Mixture

NEG_INF = float("-inf")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 stays fp64; every other float dtype is computed in fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def log_softmax_masked(logits: torch.Tensor, vocab_size: int | None) -> torch.Tensor:  # (B, V)
    x = logits.to(compute_dtype(logits))
    if vocab_size is not None and vocab_size < x.shape[1]:
        x = x.clone()
        x[:, vocab_size:] = NEG_INF  # padded embedding rows beyond the tokenizer
    return torch.log_softmax(x, dim=-1)


def mix_logits(a: torch.Tensor, lp: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:  # (B, V)
    """a*lp + (1-a)*lt with 0^0 = 1 semantics: at a = 1 it is lp exactly, at a = 0 lt exactly."""
    a2 = a[:, None]
    both = (lp > NEG_INF) & (lt > NEG_INF)
    inner = torch.where(both, a2 * torch.where(both, lp, 0) + (1 - a2) * torch.where(both, lt, 0), NEG_INF)
    return torch.where(a2 == 1, lp, torch.where(a2 == 0, lt, inner))


def _ess(l: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:  # (B,)
    """1 / sum_y pi(y)^2 / q(y) in log space; 0 when pi has mass where q has none."""
    y = torch.where(l > NEG_INF, 2 * l - logq, NEG_INF)  # +inf where q = 0 < pi
    return torch.exp(-torch.logsumexp(y, dim=-1))


def _kl(q: torch.Tensor, logq: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # (B,)
    """KL(q || pi) = sum_{q>0} q (log q - log pi); +inf where q > 0 = pi."""
    return (q * torch.where(q > 0, logq - l, 0)).sum(-1)


def entropy(l: torch.Tensor) -> torch.Tensor:  # (B,)
    p = l.exp()
    return -(torch.where(p > 0, p * l, 0)).sum(-1)


def statistics(a, lp, lt, sup: ref_solve.Support, method: str):
    """Every (B,) statistic of q_a plus logq, at the final (clamped) alpha."""
    x = mix_logits(a, lp, lt)
    log_z = torch.logsumexp(x, dim=-1)
    logq = x - log_z[:, None]
    q = logq.exp()
    stats = dict(
        log_z=log_z,
        kl_theta=_kl(q, logq, lp), kl_t=_kl(q, logq, lt),
        ess_theta=_ess(lp, logq), ess_t=_ess(lt, logq),
        entropy_q=-(torch.where(q > 0, q * logq, 0)).sum(-1),
    )
    stats["residual"] = ref_solve.residual(method, a, sup)
    return logq, stats


def mix_reference(logits_theta, logits_t, method, alpha, alpha_min, alpha_max, vocab_size,
                  force=None) -> Mixture:
    """The reference `mix` (arguments already validated by checks.check_mix_args).
    force: (B,) bool or None; forced rows are method "fixed" at a = 0 with no clamps."""
    lp = log_softmax_masked(logits_theta, vocab_size)  # (B, V)
    lt = log_softmax_masked(logits_t, vocab_size)      # (B, V)
    h_theta, h_t = entropy(lp), entropy(lt)
    sup = ref_solve.Support.build(lp, lt)
    raw, iters = ref_solve.solve(method, lp, lt, sup, alpha.to(lp.dtype), h_theta, h_t)
    a = raw.clamp(alpha_min, alpha_max)
    clamped = a != raw
    # No common support: q_a is undefined for 0 < a < 1; fall back to pi_t (a = 0).
    orphan = ~sup.any & (a > 0) & (a < 1)
    a = torch.where(orphan, torch.zeros_like(a), a)
    if force is not None:
        a = torch.where(force, torch.zeros_like(a), a)
        clamped, orphan, iters = clamped & ~force, orphan & ~force, torch.where(force, 0, iters)
    logq, stats = statistics(a, lp, lt, sup, method)
    if force is not None:
        stats["residual"] = torch.where(force, torch.zeros_like(stats["residual"]), stats["residual"])
    return Mixture(alpha=a, logq=logq, logp_theta=lp, logp_t=lt, entropy_theta=h_theta,
                   entropy_t=h_t, iters=iters, clamped=clamped | orphan, **stats)


def equation_residual(lp, lt, a, method: str) -> torch.Tensor:  # (B,)
    """How far a (B,) is from satisfying `method`'s defining equation on log-probs lp, lt (B, V):
    |g|/(1 + KL) (kl_symmetry), |h| (ess_balance), |a - H_theta/(H_theta + H_t)| (entropy),
    |KL(pi_theta||q) - KL(pi_t||q)|/(1 + KL) (reverse_kl_symmetry; |a - its limit| where a KL
    between the models is infinite), 0 (fixed). For checking an alpha computed elsewhere."""
    if method in ("kl_symmetry", "ess_balance"):
        return ref_solve.residual(method, a, ref_solve.Support.build(lp, lt))
    if method == "entropy":
        return (a - ref_solve._ratio_or_half(entropy(lp), entropy(lt))).abs()
    if method == "reverse_kl_symmetry":
        x = mix_logits(a, lp, lt)
        logq = x - torch.logsumexp(x, -1, keepdim=True)
        k1, k2 = _kl(lp.exp(), lp, logq), _kl(lt.exp(), lt, logq)
        gap = (k1 - k2).abs() / (1 + torch.maximum(k1, k2))
        k_pt, k_tp = ref_solve.kl_pair(lp, lt)
        limit = (a - ref_solve._ratio_or_half(k_pt, k_tp)).abs()
        return torch.where(torch.isinf(k_pt) | torch.isinf(k_tp), limit, gap)
    return torch.zeros_like(a)
