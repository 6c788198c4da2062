"""Result containers of the qstar_kernels ops.

Convention everywhere: ``alpha`` is the weight on **pi_theta**:
``log q = alpha * logp_theta + (1 - alpha) * logp_t - log_z``.
These are plain tensor holders: no math, no device logic.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .names import METHODS  # noqa: F401  (re-exported)


@dataclass
class Mixture:
    """The per-row geometric mixture q_a of pi_theta and pi_t and its statistics (T = 1)."""

    alpha: torch.Tensor          # (B,) weight on pi_theta actually used (after clamps)
    logq: torch.Tensor           # (B, V) log q_alpha, -inf where q = 0
    logp_theta: torch.Tensor     # (B, V) log_softmax(logits_theta), -inf on masked columns
    logp_t: torch.Tensor         # (B, V) log_softmax(logits_t)
    log_z: torch.Tensor          # (B,) log sum_y pi_theta^a pi_t^(1-a)
    kl_theta: torch.Tensor       # (B,) KL(q || pi_theta)
    kl_t: torch.Tensor           # (B,) KL(q || pi_t)
    ess_theta: torch.Tensor      # (B,) 1 / sum pi_theta^2 / q, in [0, 1]
    ess_t: torch.Tensor          # (B,) 1 / sum pi_t^2 / q, in [0, 1]
    entropy_theta: torch.Tensor  # (B,) H(pi_theta)
    entropy_t: torch.Tensor      # (B,) H(pi_t)
    entropy_q: torch.Tensor      # (B,) H(q)
    iters: torch.Tensor          # (B,) int32, passes over the vocab spent solving alpha
    residual: torch.Tensor       # (B,) defining-equation residual at the returned alpha
    clamped: torch.Tensor        # (B,) bool, True where alpha_min/alpha_max decided alpha
    forced: torch.Tensor | None = None  # (B,) bool, True where a forced-teacher row set alpha = 0

    @property
    def ess_ratio(self) -> torch.Tensor:  # (B,)
        """ess_theta / ess_t; inf when only ess_t is 0, 1 when both are 0."""
        both0 = (self.ess_theta == 0) & (self.ess_t == 0)
        ratio = self.ess_theta / torch.where(self.ess_t > 0, self.ess_t, torch.ones_like(self.ess_t))
        ratio = torch.where(self.ess_t > 0, ratio, torch.full_like(ratio, float("inf")))
        return torch.where(both0, torch.ones_like(ratio), ratio)

    def row_stats(self) -> dict[str, torch.Tensor]:
        """The (B,)-shaped statistics by name (what a record stores per token)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("logq", "logp_theta", "logp_t"):
            out.pop(name)
        out["ess_ratio"] = self.ess_ratio
        return out


@dataclass
class Sampled:
    """One sampled token per row and its log-probability under the behaviour distribution."""

    tokens: torch.Tensor         # (B,) int64
    logp_behavior: torch.Tensor  # (B,) log of the tempered, truncated, renormalised q; 0 if greedy


@dataclass
class Step:
    """One decode step of the mixture sampler: the drawn token and every per-token record value.

    All (B,). logp_theta / logp_t are the models' log-probs of the token at T = 1 (before any
    truncation or support restriction), logq the untruncated mixture's (on the restricted support
    when one is set), logp_behavior the distribution really sampled.
    The rest are the row statistics of Mixture (same names, same meaning).
    """

    tokens: torch.Tensor
    logp_theta: torch.Tensor
    logp_t: torch.Tensor
    logq: torch.Tensor
    logp_behavior: torch.Tensor
    alpha: torch.Tensor
    log_z: torch.Tensor
    kl_theta: torch.Tensor
    kl_t: torch.Tensor
    ess_theta: torch.Tensor
    ess_t: torch.Tensor
    entropy_theta: torch.Tensor
    entropy_t: torch.Tensor
    entropy_q: torch.Tensor
    iters: torch.Tensor
    residual: torch.Tensor
    clamped: torch.Tensor
    forced: torch.Tensor | None = None
    passes: torch.Tensor | None = None  # (B,) int32: full reads of both logit rows (fused Triton step; -1 elsewhere)

    @staticmethod
    def from_parts(m: Mixture, s: Sampled) -> "Step":
        tok = s.tokens[:, None]
        stats = m.row_stats()
        stats.pop("ess_ratio")
        return Step(tokens=s.tokens, logp_theta=m.logp_theta.gather(1, tok).squeeze(1),
                    logp_t=m.logp_t.gather(1, tok).squeeze(1), logq=m.logq.gather(1, tok).squeeze(1),
                    logp_behavior=s.logp_behavior, **stats)

    ess_ratio = Mixture.ess_ratio
