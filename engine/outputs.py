"""What generate returns: one SampleOutput per (prompt, sample), with per-token lists.

Not for: serialising records (the pipeline writes these to JSONL).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# per-token values recorded for every generated token, in this order (Step field names)
TOKEN_FIELDS = ("alpha", "logp_theta", "logp_t", "logq", "logp_behavior", "kl_theta", "kl_t",
                "ess_theta", "ess_t", "entropy_theta", "entropy_t", "entropy_q", "log_z",
                "iters", "residual", "clamped", "forced")
RECORD_FIELDS = TOKEN_FIELDS + ("drafted",)  # + speculative decoding's per-token flag (0 elsewhere)


@dataclass
class SampleOutput:
    """One response. Every per-token list has exactly len(token_ids) entries; token_ids ends
    with the EOS / stop token when finish_reason is "stop". alpha is the weight on pi_theta."""

    prompt_index: int
    sample_index: int
    key: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"          # stop | length | error
    error: str | None = None
    num_prompt_tokens_theta: int = 0
    num_prompt_tokens_t: int = 0
    alpha: list[float] = field(default_factory=list)
    logp_theta: list[float] = field(default_factory=list)
    logp_t: list[float] = field(default_factory=list)
    logq: list[float] = field(default_factory=list)
    logp_behavior: list[float] = field(default_factory=list)
    kl_theta: list[float] = field(default_factory=list)
    kl_t: list[float] = field(default_factory=list)
    ess_theta: list[float] = field(default_factory=list)
    ess_t: list[float] = field(default_factory=list)
    entropy_theta: list[float] = field(default_factory=list)
    entropy_t: list[float] = field(default_factory=list)
    entropy_q: list[float] = field(default_factory=list)
    log_z: list[float] = field(default_factory=list)
    iters: list[float] = field(default_factory=list)
    residual: list[float] = field(default_factory=list)
    clamped: list[float] = field(default_factory=list)   # 1 where alpha_min/alpha_max decided alpha
    forced: list[float] = field(default_factory=list)    # 1 where force_teacher (or support) set alpha = 0
    # cross-tokenizer mode only (None otherwise): share of tokens whose carry was one-to-one, and
    # share of tokens that end where theta's own tokenization of the text has no token end
    carry_direct: float | None = None
    noncanonical: float | None = None
    drafted: list[float] = field(default_factory=list)   # speculative: 1 = an accepted draft token,
    # 0 = a corrected / bonus / plain token. Descriptive only, never a weight (logp_behavior is)
    draft_accept_rate: float | None = None  # speculative: drafts accepted / drafts verified (descriptive)

    @property
    def ess_ratio(self) -> list[float]:
        return [a / b if b > 0 else (float("inf") if a > 0 else 1.0) for a, b in zip(self.ess_theta, self.ess_t)]

    @property
    def seq_logw_theta(self) -> float:
        """log of the sequence importance weight pi_theta(y) / behaviour(y)."""
        return sum(a - b for a, b in zip(self.logp_theta, self.logp_behavior))

    @property
    def seq_logw_t(self) -> float:
        return sum(a - b for a, b in zip(self.logp_t, self.logp_behavior))
