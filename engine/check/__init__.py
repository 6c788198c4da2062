"""`qstar check`: an exactness self-test on the user's own pair, backend, dtype and flags.

    qstar check --model-theta P --model-t T [--backend hf|vllm] [mixture / sampling flags]

1. First tokens: `--draws` samples of the first response token per prompt, from the engine as a
   run would draw them, against the exact behaviour distribution computed in float64 from a
   teacher-forced pass of both models (qstar_kernels reference math, controls included):
   Pearson chi-square on bins of expected count >= 5 (cells sorted by probability, grouped in
   that order; see chi_square); p-value printed; FAIL below --p-min. Too few draws for two such
   bins: the row says how many are needed and is not judged (exit 3).
   A draw the exact distribution gives probability 0 fails outright (with a nucleus support:
   0 under every boundary variant, see 2.).
2. Recompute: `--samples` full responses per prompt; every recorded per-token value (alpha,
   logp_theta, logp_t, logq, logp_behavior, KLs, ESS, entropy of q, forced) is recomputed from a
   teacher-forced pass over prompt + response, in float64. Error = |got - want| / max(1, |want|).
   With a nucleus support (support_top_p < 1) a token may instead match the mixture at
   support_top_p -+ tolerance/10: model-precision differences between the engine's logits and
   this pass can move the boundary token of pi_t's nucleus (counted as support_boundary_tokens).
   alpha of kl_symmetry / ess_balance where the equation is flat (the models nearly agree, so
   model-precision noise moves the root while q hardly changes) counts as right when it meets
   the equation within the tolerance (counted as flat-equation tokens).
3. The alpha equation: the recorded alpha put into the method's defining equation on the
   teacher-forced distributions (qstar_kernels.equation_residual), tokens whose alpha a clamp or
   a forced-teacher rule decided aside (those are checked against their rule instead).
One PASS/FAIL table; exit 0 when every row passes, 1 when one fails, 2 on bad input, 3 when no
row fails but a first-token test had too few draws to be a test ("not enough draws: N needed").
Not for: sampling datasets (pipeline/) or the math itself (qstar_kernels).
"""
from qstar_kernels.lazy import lazy_getattr

# runner.py / stats.py load torch: imported on first use (cli.py and report.py do not)
_LAZY = {"check": "runner", "Reference": "runner", "chi_square": "stats", "draws_needed": "stats", "rel_err": "stats",
         "ChiSquare": "stats", "Report": "report", "Row": "report", "add_parser": "cli", "run": "cli"}
__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
