"""Importance-sampling estimates of π_θ's accuracy on a pair whose truth is known exactly.

π_θ and the behaviour b are i.i.d. categoricals over 3 tokens, 4 tokens a sequence, so every
sequence probability (and the truth E_π_θ[r], and Var_b(w·r)) comes from enumerating 3⁴
sequences. Each of 200 fixed seeds draws 400 sequences from b. A wrong weight (ignoring it,
or using the untruncated q when a truncated distribution was sampled) fails the same checks.
"""
import itertools
import math

import numpy as np
import pytest

from engine.analysis import importance as imp

SEEDS, N, L = 200, 400, 4
PI = np.array([0.5, 0.3, 0.2])      # π_θ per token
B = np.array([0.25, 0.35, 0.4])     # behaviour per token
SEQS = np.array(list(itertools.product(range(3), repeat=L)))  # (81, L)
REWARD = ((SEQS == 0).sum(1) >= 2).astype(float)               # "right answer": at least two 0s


def log_prob(p):
    with np.errstate(divide="ignore"):  # a truncated token: log 0 = -inf, a zero probability
        return np.log(p)[SEQS].sum(1)  # (81,)


def truth_and_se(behaviour):
    """E_π_θ[r] and the standard error of the mean of SEEDS plain estimates, both exact."""
    lp, lb = log_prob(PI), log_prob(behaviour)
    pb, w = np.exp(lb), np.exp(lp - lb)
    truth = float((np.exp(lp) * REWARD).sum())
    var = float((pb * (w * REWARD) ** 2).sum() - (pb * w * REWARD).sum() ** 2)
    return truth, math.sqrt(var / N / SEEDS)


def run_seeds(sample_from, weight_with):
    """Per seed: plain and self-normalised estimates from N draws of `sample_from`, weighted
    by π_θ / `weight_with` (equal to sample_from when the weights are right)."""
    lp, lw_den = log_prob(PI), log_prob(weight_with)
    ps = np.exp(log_prob(sample_from))
    out = []
    for seed in range(SEEDS):
        idx = np.random.default_rng(seed).choice(len(SEQS), size=N, p=ps / ps.sum())
        logw, r = lp[idx] - lw_den[idx], REWARD[idx]
        out.append((imp.plain_is(logw, r), imp.self_normalised_is(logw, r)))
    return out


def coverage(results, k, truth):
    return np.mean([res[k]["ci"][0] <= truth <= res[k]["ci"][1] for res in results])


def test_plain_estimate_is_unbiased_and_both_intervals_cover():
    truth, se = truth_and_se(B)
    res = run_seeds(B, B)
    mean = np.mean([p["value"] for p, _ in res])
    # fixed seeds make this deterministic (measured: 0.70 se); a 1-se band is the bar
    assert abs(mean - truth) <= se, (mean, truth, se)
    assert coverage(res, 0, truth) >= 0.90 and coverage(res, 1, truth) >= 0.90, \
        (coverage(res, 0, truth), coverage(res, 1, truth))


def test_wrong_weights_fail_the_same_checks():
    """Sampling from b truncated to its top 2 tokens but weighting with the untruncated b (logq
    instead of logp_behavior) is biased: the harness above must catch it."""
    truncated = np.where(B >= np.sort(B)[-2], B, 0.0)
    truncated /= truncated.sum()
    truth, se = truth_and_se(B)
    res = run_seeds(truncated, B)
    mean = np.mean([p["value"] for p, _ in res])
    assert abs(mean - truth) > 5 * se and coverage(res, 0, truth) < 0.5 and coverage(res, 1, truth) < 0.5
    unweighted = np.mean([REWARD[np.random.default_rng(s).choice(len(SEQS), size=N, p=np.exp(log_prob(B)))].mean()
                          for s in range(SEEDS)])
    assert abs(unweighted - truth) > 5 * se  # no weights at all: b's accuracy, not π_θ's


def test_sequence_ess_is_exact():
    w = np.array([1.0, 2.0, 3.0, 4.0])
    assert imp.seq_ess(np.log(w)) == pytest.approx(100 / 30, rel=1e-12)          # (Σw)²/Σw²
    assert imp.seq_ess(np.log(w) - 900) == pytest.approx(100 / 30, rel=1e-12)    # exp would underflow
    assert imp.seq_ess([0.0, None, None]) == pytest.approx(1.0)                   # null = zero weight
    assert imp.seq_ess([0.0] * 7) == pytest.approx(7.0) and imp.seq_ess([None]) is None


def test_estimators_on_hand_computed_values():
    logw, r = np.log([0.5, 1.0, 2.0, 0.5]), [1, 0, 1, 0]
    plain, snis = imp.plain_is(logw, r), imp.self_normalised_is(logw, r)
    assert plain["value"] == pytest.approx(2.5 / 4)
    assert plain["se"] == pytest.approx(np.std([0.5, 0, 2, 0], ddof=1) / 2)
    assert snis["value"] == pytest.approx(2.5 / 4.0)
    nw = np.array([0.5, 1, 2, 0.5]) / 4
    assert snis["se"] == pytest.approx(math.sqrt((nw ** 2 * (np.array(r) - 0.625) ** 2).sum()))
    # on-policy samples (every logw 0): both estimates are the plain accuracy, ESS = n
    est = imp.estimates([0.0] * 8, [1, 0, 0, 0, 1, 0, 0, 0])
    assert est["theta_accuracy_is"]["value"] == est["theta_accuracy_snis"]["value"] == est["accuracy"] == 0.25
    assert est["seq_ess"] == pytest.approx(8) and est["ess_warning"] is not None  # 8 < MIN_ESS


def test_small_ess_is_said_plainly():
    est = imp.estimates([0.0, -30.0, -40.0, -50.0] * 5, [1, 0, 0, 0] * 5)
    assert est["seq_ess"] == pytest.approx(5.0, rel=1e-6)
    assert "say next to nothing about π_θ" in est["ess_warning"]
    assert imp.estimates([None, None], [1, 0])["ess_warning"].startswith("every importance weight is 0")
    assert imp.estimates([0.0] * 20, [1] * 20)["ess_warning"] is None


def test_wilson_interval():
    assert imp.wilson(0, 16)[0] == 0.0 and 0.15 < imp.wilson(0, 16)[1] < 0.25
    lo, hi = imp.wilson(8, 16)
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(0.5 - lo)
