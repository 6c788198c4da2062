"""The first tokens the vllm backend draws follow the exact (float64) behaviour distribution."""
import numpy as np
import pytest
from scipy.stats import chisquare

import exact
from engine.config import MixtureConfig
from engine.prompts import render

N = 2000


def _chi2_pvalue(tokens, probs, min_expected=5.0):
    """Pearson chi-square of token counts against probs; bins with small expectation pooled."""
    counts = np.bincount(tokens, minlength=len(probs)).astype(float)
    expected = probs * len(tokens)
    big = expected >= min_expected
    obs = np.append(counts[big], counts[~big].sum())
    exp_ = np.append(expected[big], expected[~big].sum())
    keep = exp_ > 0
    return chisquare(obs[keep], exp_[keep] * obs[keep].sum() / exp_[keep].sum()).pvalue


@pytest.mark.parametrize("method,sampling", [
    ("kl_symmetry", dict(temperature=1.0)),
    ("ess_balance", dict(temperature=0.8, top_k=40, top_p=0.95)),
])
def test_first_tokens_chi_square(engine_a, ref_a, method, sampling):
    engine_a.mixture = engine_a.engine.mixture = MixtureConfig(alpha_method=method)
    prompt = "solve the problem step by step"
    outs = engine_a.generate([prompt], max_new_tokens=1, n=N, seed=11, ignore_eos=True, **sampling)
    tokens = np.array([o.token_ids[0] for o in outs])
    alphas = {o.alpha[0] for o in outs}
    assert max(alphas) - min(alphas) < 1e-6  # one prompt, one row of logits: one alpha
    lp, lt = ref_a.rows(render(engine_a.tokenizer, prompt), [0])
    lq = exact.mixture(lp[0], lt[0], outs[0].alpha[0])
    beh = exact.behaviour(lq, sampling.get("temperature", 1.0), sampling.get("top_k", 0), sampling.get("top_p", 1.0))
    assert np.all(beh[tokens] > 0)  # nothing outside the truncated support
    assert _chi2_pvalue(tokens, beh) > 1e-3
    lpb = np.array([o.logp_behavior[0] for o in outs])
    assert np.max(np.abs(lpb - np.log(beh[tokens]))) < 1e-4
