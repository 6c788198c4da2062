"""π_θ's expected reward estimated from another sampler's samples by sequence importance weights.

Samples y_i ~ behaviour b (what was really sampled: q after temperature/truncation), rewards r_i,
log-weights logw_i = Σ_tokens (logp_theta − logp_behavior) = log π_θ(y_i)/b(y_i) (the records'
`seq_logw_theta`). With w_i = exp(logw_i):
  plain (unbiased):      μ̂ = (1/n) Σ w_i r_i,        se = sd(w_i r_i) / √n  (sd with n − 1)
  self-normalised:       μ̃ = Σ w_i r_i / Σ w_i,      se = √(Σ w_i² (r_i − μ̃)²) / Σ w_i  (delta method)
  sequence ESS:          (Σ w_i)² / Σ w_i²  ∈ [1, n]
95 % intervals are normal (±1.96 se), cut to the reward range [0, 1]; they mean little when the
ESS is small, which `ess_warning` says in words. The target is π_θ exactly as recorded (T = 1, no
truncation): that is what `logp_theta` holds. Everything runs in log space (sequence log-weights
are often −100s). A null log-weight (a token π_θ gives no mass) is a zero weight.
Not for: grading answers (answers.py), distributions or condition checks (stats.py).
"""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054
NO_ESTIMATE = {"value": None, "se": None, "ci": None}
MIN_ESS = 10.0  # below this many effective samples an IS estimate is noise: say so


def _logw(logw) -> np.ndarray:
    lw = np.array([-np.inf if v is None else v for v in logw], dtype=np.float64)
    return np.where(np.isnan(lw), -np.inf, lw)


def _scaled(logw) -> tuple[np.ndarray, float] | None:
    """(w / e^m, m) with m the largest finite log-weight; None when every weight is 0."""
    lw = _logw(logw)
    if not np.isfinite(lw).any():
        return None
    m = float(lw[np.isfinite(lw)].max())
    return np.exp(lw - m), m


def _interval(value: float, se: float) -> list[float]:
    return [max(0.0, value - Z95 * se), min(1.0, value + Z95 * se)]


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def plain_is(logw, rewards) -> dict:
    """The unbiased estimate (1/n) Σ w r with its standard error and 95 % interval."""
    r = np.asarray(rewards, dtype=np.float64)
    sc = _scaled(logw)
    if sc is None or r.size < 2:
        return {"value": 0.0 if sc is None and r.size else None, "se": None, "ci": None}
    w, m = sc
    wr = w * r
    scale = math.exp(m) if m < 700 else math.inf  # a weight above e^700 is an overflow, reported as None
    value, se = scale * wr.mean(), scale * wr.std(ddof=1) / math.sqrt(r.size)
    if not (math.isfinite(value) and math.isfinite(se)):
        return {"value": None, "se": None, "ci": None}
    return {"value": float(value), "se": float(se), "ci": _interval(value, se)}


def self_normalised_is(logw, rewards) -> dict:
    """Σ w r / Σ w with its delta-method standard error and 95 % interval."""
    r = np.asarray(rewards, dtype=np.float64)
    sc = _scaled(logw)
    if sc is None or r.size == 0:
        return {"value": None, "se": None, "ci": None}
    w = sc[0] / sc[0].sum()  # normalised weights: the shift m cancels
    value = float((w * r).sum())
    se = float(math.sqrt((w ** 2 * (r - value) ** 2).sum()))
    return {"value": value, "se": se, "ci": _interval(value, se)}


def seq_ess(logw) -> float | None:
    """(Σ w)² / Σ w² over the samples, in log space; None when every weight is 0."""
    sc = _scaled(logw)
    if sc is None:
        return None
    w = sc[0]
    return float(w.sum() ** 2 / (w ** 2).sum())


def ess_warning(ess: float | None, n: int, min_ess: float = MIN_ESS) -> str | None:
    """A plain sentence when the estimate cannot be trusted, else None."""
    if ess is None:
        return f"every importance weight is 0 (π_θ gives no mass to any of the {n} samples): no estimate"
    if ess < min_ess:
        return (f"sequence ESS is {ess:.1f} of {n} samples (below {min_ess:g}): the importance-sampling estimates "
                "rest on about that many samples and say next to nothing about π_θ; their intervals are not "
                "reliable either")
    return None


def wilson(successes: float, n: int) -> list[float] | None:
    """95 % Wilson interval of a proportion (fine at 0/n and n/n, unlike ±1.96·se)."""
    if n == 0:
        return None
    p, z2 = successes / n, Z95 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def estimates(logw, rewards, min_ess: float = MIN_ESS) -> dict:
    """Accuracy of these samples and both estimates of π_θ's accuracy, with ESS and a warning."""
    r = np.asarray(rewards, dtype=np.float64)
    n = int(r.size)
    ess = seq_ess(logw)
    return {"n": n, "accuracy": float(r.mean()) if n else None, "accuracy_ci": wilson(float(r.sum()), n),
            "theta_accuracy_is": plain_is(logw, r), "theta_accuracy_snis": self_normalised_is(logw, r),
            "seq_ess": ess, "seq_ess_norm": ess / n if ess is not None and n else None,
            "ess_warning": ess_warning(ess, n, min_ess) if n else None}
