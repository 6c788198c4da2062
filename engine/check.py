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
from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

PROMPTS = ("What is 7 times 8? Answer with a number.",
           "Write one sentence about the sea.",
           "List three prime numbers.")
# per-token values recomputed from the teacher-forced pass (SampleOutput field names)
VALUES = ("alpha", "logp_theta", "logp_t", "logq", "logp_behavior", "kl_theta", "kl_t", "ess_theta",
          "ess_t", "entropy_q")
TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 1e-1}
FLAG_FIELDS = ("model_theta", "model_t", "alpha_method", "alpha", "alpha_min", "alpha_max", "support_top_k",
               "support_top_p", "force_teacher", "temperature", "top_k", "top_p", "min_p", "seed",
               "batch_size", "device", "dtype", "threads", "backend")


@dataclass
class Row:
    name: str
    value: str
    limit: str
    ok: bool
    detail: dict = field(default_factory=dict)
    needed: int = 0  # > 0: too few draws for a valid test; this many are needed (the row is not judged)

    @property
    def result(self) -> str:
        return "FAIL" if not self.ok else f"NEED {self.needed} DRAWS" if self.needed else "PASS"


@dataclass
class Report:
    config: dict
    rows: list[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.ok and not r.needed for r in self.rows)

    @property
    def needed(self) -> int:
        """Draws per prompt that make every first-token test valid (0: they all are)."""
        return max([r.needed for r in self.rows] + [0])

    @property
    def exit_code(self) -> int:
        """0 every row passes, 1 a row fails, 3 no row fails but a test had too few draws."""
        if any(not r.ok for r in self.rows) or not self.rows:
            return 1
        return 3 if self.needed else 0

    def table(self) -> str:
        w = max(len(r.name) for r in self.rows) if self.rows else 10
        v = max([len(r.value) for r in self.rows] + [5])
        lines = [f"{'check':<{w}}  {'value':<{v}}  {'limit':<12}  result"]
        lines += [f"{r.name:<{w}}  {r.value:<{v}}  {r.limit:<12}  {r.result}" for r in self.rows]
        failed = [r.name for r in self.rows if not r.ok]
        if failed:
            lines.append(f"RESULT: FAIL ({len(self.rows) - len(failed)}/{len(self.rows)} rows pass; failed: "
                         f"{', '.join(failed)})")
        elif self.needed:
            lines.append(f"RESULT: not enough draws: {self.needed} needed (rerun with --draws {self.needed}; "
                         "no row failed)")
        else:
            lines.append(f"RESULT: PASS ({len(self.rows)}/{len(self.rows)} rows pass)")
        return "\n".join(lines)


# ---- statistics ----------------------------------------------------------------------------
MIN_EXPECTED = 5.0  # every chi-square bin expects at least this many draws


@dataclass
class ChiSquare:
    stat: float
    dof: int          # bins - 1; 0 when the draws are too few for two bins (see `needed`)
    p: float          # nan when dof == 0
    needed: int = 0   # draws that make two bins (a valid test); 0 when this test is valid

    @property
    def valid(self) -> bool:
        return self.dof >= 1


def _bin_ends(e: list[float], min_expected: float) -> list[int]:
    """Cut cells (expected counts sorted descending) into consecutive bins, each closed as soon as
    its expected count reaches `min_expected`; a last group short of it joins the bin before.
    Returns each bin's end index (exclusive); [] when not even one bin reaches min_expected."""
    cs = list(itertools.accumulate(e))
    ends, start_sum, i = [], 0.0, 0
    while True:
        j = bisect.bisect_left(cs, start_sum + min_expected, lo=i)  # the first cell that closes the bin
        if j >= len(cs):
            break
        ends.append(j + 1)
        start_sum, i = cs[j], j + 1
    if ends:
        ends[-1] = len(cs)
    return ends


def draws_needed(probs: torch.Tensor, min_expected: float = MIN_EXPECTED) -> int:
    """The fewest draws for which the binning below makes two bins; 0 when no number can (one
    possible token: nothing to test beyond 'every draw is that token')."""
    p = torch.sort(probs[probs > 0].double(), descending=True).values
    if p.numel() < 2:
        return 0

    def two_bins(n: int) -> bool:  # the very rule chi_square bins by (monotone in n)
        return len(_bin_ends((p * n).tolist(), min_expected)) >= 2

    lo, hi = 1, 2
    while not two_bins(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 62:
            return 0
    while lo < hi:  # two_bins is monotone in n
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if not two_bins(mid) else (lo, mid)
    return hi


def chi_square(counts: torch.Tensor, probs: torch.Tensor, n: int,
               min_expected: float = MIN_EXPECTED) -> ChiSquare:
    """Pearson's chi-square of `counts` (n draws) against `probs`, on bins of expected count >=
    min_expected: cells sorted by expected count (descending, ties by index) are grouped in that
    order, a bin closing once its expected count reaches min_expected, a short last group joining
    the bin before. So a cell expecting >= 5 is its own bin and the thin tail is pooled into bins
    that each expect ~5 (pooling the tail into one cell and leaving the other thin cells alone, as
    this test once did, makes the statistic's distribution far from chi-square: false alarms and
    missed biases). Cells of probability 0 are not binned: a draw there is checked apart as
    impossible. Too few draws for two bins: dof 0 and `needed` = the draws that make two."""
    e = (probs.double() * n)
    order = torch.argsort(e, descending=True, stable=True)
    e, c = e[order], counts.double()[order]
    keep = e > 0
    e, c = e[keep], c[keep]
    ends = _bin_ends(e.tolist(), min_expected)
    if len(ends) < 2:
        return ChiSquare(0.0, 0, math.nan, needed=draws_needed(probs, min_expected))
    last = torch.tensor(ends) - 1
    zero = torch.zeros(1, dtype=torch.float64)
    ex = torch.diff(torch.cumsum(e, 0)[last], prepend=zero)
    obs = torch.diff(torch.cumsum(c, 0)[last], prepend=zero)
    dof = len(ends) - 1
    stat = float(((obs - ex) ** 2 / ex).sum())
    p = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                      torch.tensor(stat / 2, dtype=torch.float64)))
    return ChiSquare(stat, dof, p)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """|got - want| / max(1, |want|); equal infinities count 0, one-sided infinity counts inf."""
    same_inf = torch.isinf(got) & torch.isinf(want) & (torch.sign(got) == torch.sign(want))
    err = (got - want).abs() / want.abs().clamp_min(1.0)
    err = torch.where(same_inf, torch.zeros_like(err), err)
    return torch.where(torch.isnan(err), torch.full_like(err, math.inf), err)


# ---- the pair --------------------------------------------------------------------------------
class Reference:
    """Teacher-forced logits of both models (float64), and the exact mixture at each position."""

    def __init__(self, qm, backend: str, mixture, sampling: dict):
        from .loading import load_model, token_table

        self.mixture, self.sampling = mixture, sampling
        vocab = qm.pair.vocab
        self.width, self.vocab_size = vocab.logits_width, vocab.vocab_size
        if backend == "hf":
            self.models = (qm.pair.model_theta, qm.pair.model_t)
        else:  # the vLLM engine holds its own copies: load HF ones on CPU for the reference
            dev = torch.device("cpu")
            m_theta = load_model(qm.pair.path_theta, dev, torch.float32)[0]
            m_t = m_theta if qm.pair.path_t == qm.pair.path_theta else load_model(qm.pair.path_t, dev, torch.float32)[0]
            self.models = (m_theta, m_t)
        self.special = token_table(vocab.special_ids, self.width) if mixture.force_special else None

    @torch.no_grad()
    def logits(self, ids_theta: list[int], ids_t: list[int], n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n_out, W) float64 logits of each model at the last n_out positions of its ids."""
        out = []
        for model, ids in zip(self.models, (ids_theta, ids_t)):
            dev = next(model.parameters()).device
            x = torch.tensor([ids], device=dev)
            lg = model(input_ids=x).logits[0, -n_out:, :self.width]
            out.append(lg.double().cpu())
        return out[0], out[1]

    def mixture_at(self, lg_theta, lg_t, support_top_p: float | None = None):
        """The exact mixture at each row (row 0 = the first response position)."""
        from qstar_kernels import mix

        m = self.mixture
        force = None
        if m.force_first:
            force = torch.zeros(lg_theta.shape[0], dtype=torch.bool)
            force[0] = True
        return mix(lg_theta, lg_t, m.alpha_method, alpha=m.alpha, alpha_min=m.alpha_min, alpha_max=m.alpha_max,
                   vocab_size=self.vocab_size, support_top_k=m.support_top_k,
                   support_top_p=m.support_top_p if support_top_p is None else support_top_p,
                   force=force, force_tokens=self.special, backend="torch")

    def support_variants(self, slack: float) -> list[float | None]:
        """support_top_p values to try: the nominal one, and p -+ slack when a nucleus is on.
        The nucleus boundary is a cumulative sum: logits that differ at the model-precision level
        (incremental decode vs this teacher-forced pass) can move one boundary token in or out,
        which moves alpha visibly. A token matches when it matches one of the variants."""
        p = self.mixture.support_top_p
        if p >= 1:
            return [None]
        return [None, max(p - slack, 1e-6), min(p + slack, 1.0)]

    def behaviour(self, logq):
        from qstar_kernels import behaviour

        s = self.sampling
        return behaviour(logq, temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"], min_p=s["min_p"])

    def allowed(self, logq, beh, slack: float):
        """(B, V) bool: in the behaviour support, or (greedy) within slack of the argmax: the
        engine's argmax may pick a near-tied token at model precision."""
        ok = beh > float("-inf")
        if self.sampling["temperature"] == 0:
            ok |= logq >= logq.amax(-1, keepdim=True) - slack
        return ok


# ---- the three checks --------------------------------------------------------------------------
def _errors(outs) -> list[Row]:
    bad = [o for o in outs if o.finish_reason == "error"]
    if not bad:
        return []
    return [Row("generation errors", str(len(bad)), "0", False, {"first": bad[0].error})]


def first_tokens(qm, ref: Reference, prompt_ids, draws: int, seed: int, p_min: float, tol: float) -> list[Row]:
    s = ref.sampling
    ids_theta, ids_t = zip(*prompt_ids)
    outs = qm.generate(list(ids_theta), prompts_t=list(ids_t), n=draws, max_new_tokens=1,
                       temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"], min_p=s["min_p"],
                       seed=seed, ignore_eos=True)
    rows = _errors(outs)
    if rows:
        return rows
    for i, (ids_p, ids_q) in enumerate(prompt_ids):
        toks = torch.tensor([o.token_ids[0] for o in outs[i * draws:(i + 1) * draws]])
        lg_theta, lg_t = ref.logits(ids_p, ids_q, 1)
        logqs = [ref.mixture_at(lg_theta, lg_t, p_var).logq for p_var in ref.support_variants(tol / 10)]
        behs = [ref.behaviour(lq) for lq in logqs]
        probs = behs[0][0].exp()
        counts = torch.bincount(toks, minlength=ref.width)[:ref.width].double()
        # a nucleus boundary token may be in or out; so may a greedy near-tie
        possible = torch.stack([ref.allowed(lq, b, tol)[0] for lq, b in zip(logqs, behs)]).any(0)
        impossible = int(counts[~possible].sum())
        cs = chi_square(counts, probs, draws)
        detail = dict(chi2=cs.stat, dof=cs.dof, p=cs.p if cs.valid else None, impossible_draws=impossible)
        name = f"first token, prompt {i + 1} ({draws} draws)"
        bad = f", {impossible} impossible" if impossible else ""
        if cs.valid:
            rows.append(Row(name, f"p = {cs.p:.3g}" + bad, f"p > {p_min:g}", impossible == 0 and cs.p > p_min,
                            detail))
        elif cs.needed:  # a chi-square on fewer draws would be no test: say so, judge nothing
            rows.append(Row(name, f"{cs.needed} draws needed" + bad, f"p > {p_min:g}", impossible == 0,
                            dict(detail, needed=cs.needed), needed=cs.needed))
        else:  # one possible token: every draw must be it
            rows.append(Row(name, f"1 possible token{bad}", "0 impossible", impossible == 0, detail))
    return rows


def recompute(qm, ref: Reference, prompt_ids, samples: int, max_new_tokens: int, seed: int,
              tol: float) -> list[Row]:
    from qstar_kernels import equation_residual

    s, m = ref.sampling, ref.mixture
    ids_theta, ids_t = zip(*prompt_ids)
    outs = qm.generate(list(ids_theta), prompts_t=list(ids_t), n=samples, max_new_tokens=max_new_tokens,
                       temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"], min_p=s["min_p"],
                       seed=seed)
    rows = _errors(outs)
    if rows:
        return rows
    errs = {k: 0.0 for k in VALUES}
    n_tok = outside = forced_mismatch = forced_bad = clamp_bad = n_forced = n_clamped = boundary = 0
    ill_conditioned = 0
    resid = 0.0
    for o in outs:
        T = len(o.token_ids)
        if T == 0:
            continue
        ids_p, ids_q = prompt_ids[o.prompt_index]
        lg_theta, lg_t = ref.logits(ids_p + o.token_ids[:-1], ids_q + o.token_ids[:-1], T)
        tok = torch.tensor(o.token_ids)[:, None]
        got = {k: torch.tensor(getattr(o, k), dtype=torch.float64) for k in VALUES}
        cands = []  # per support variant: (mixture, its support_top_p, token allowed, errors (F, T))
        for p_var in ref.support_variants(tol / 10):
            mx = ref.mixture_at(lg_theta, lg_t, p_var)
            beh_full = ref.behaviour(mx.logq)
            beh = beh_full.gather(1, tok).squeeze(1)
            allowed = ref.allowed(mx.logq, beh_full, tol).gather(1, tok).squeeze(1)
            want = dict(alpha=mx.alpha, logp_theta=mx.logp_theta.gather(1, tok).squeeze(1),
                        logp_t=mx.logp_t.gather(1, tok).squeeze(1), logq=mx.logq.gather(1, tok).squeeze(1),
                        logp_behavior=torch.zeros_like(beh) if s["temperature"] == 0 else beh,
                        kl_theta=mx.kl_theta, kl_t=mx.kl_t, ess_theta=mx.ess_theta, ess_t=mx.ess_t,
                        entropy_q=mx.entropy_q)
            cands.append((mx, p_var, allowed, torch.stack([rel_err(got[k], want[k]) for k in VALUES])))
        # the variant is judged on the values (alpha aside: see below)
        pick = torch.stack([c[3][1:].max(0).values for c in cands]).argmin(0)  # best variant per token
        boundary += int((pick != 0).sum())
        err = torch.stack([c[3] for c in cands])[pick, :, torch.arange(T)]  # (T, F)
        mx_forced = torch.stack([c[0].forced for c in cands])[pick, torch.arange(T)]
        n_tok += T
        outside += int((~torch.stack([c[2] for c in cands])[pick, torch.arange(T)]).sum())
        forced = torch.tensor(o.forced, dtype=torch.bool)
        clamped = torch.tensor(o.clamped, dtype=torch.bool)
        alpha = torch.tensor(o.alpha, dtype=torch.float64)
        forced_mismatch += int((forced != mx_forced).sum())
        forced_bad += int((forced & (alpha != 0)).sum())
        n_forced += int(forced.sum())
        n_clamped += int((clamped & ~forced).sum())
        free = ~forced
        clamp_bad += int((free & ((alpha < m.alpha_min - 1e-6) | (alpha > m.alpha_max + 1e-6))).sum())
        solved = ~forced & ~clamped
        r_tok = torch.zeros(T, dtype=torch.float64)
        if solved.any():
            r = torch.stack([equation_residual(lg_theta[solved], lg_t[solved], alpha[solved], m.alpha_method,
                                               vocab_size=ref.vocab_size, support_top_k=m.support_top_k,
                                               support_top_p=m.support_top_p if c[1] is None else c[1])
                             for c in cands])
            r_tok[solved] = r.gather(0, pick[solved][None]).squeeze(0)
            resid = max(resid, float(r_tok.max()))
        # kl_symmetry / ess_balance: where the two models nearly agree the equation is flat in
        # alpha (g' = -Var_q(d) ~ 0), so model-precision noise moves the root a lot while q
        # hardly changes; there the recorded alpha counts as right when it meets the equation.
        flat = solved & (err[:, 0] > tol) & (r_tok <= tol) if m.alpha_method in ("kl_symmetry", "ess_balance") \
            else torch.zeros(T, dtype=torch.bool)
        ill_conditioned += int(flat.sum())
        err[flat, 0] = 0.0
        for j, k in enumerate(VALUES):
            errs[k] = max(errs[k], float(err[:, j].max()))
    label = f"({len(outs)} samples, {n_tok} tokens)"
    rows.append(Row(f"tokens outside the behaviour support {label}", str(outside), "0", outside == 0,
                    dict(tokens=n_tok, support_boundary_tokens=boundary)))
    for k in VALUES:
        name = f"recompute {k}" + (f" ({ill_conditioned} flat-equation tokens)" if k == "alpha" and ill_conditioned
                                   else "")
        rows.append(Row(name, f"max err {errs[k]:.2g}", f"<= {tol:g}", errs[k] <= tol,
                        dict(flat_equation_tokens=ill_conditioned) if k == "alpha" else {}))
    rows.append(Row("forced flags match the rule", f"{forced_mismatch} mismatches", "0", forced_mismatch == 0,
                    dict(forced=n_forced)))
    rows.append(Row(f"forced tokens have alpha = 0 ({n_forced} forced)", f"{forced_bad} violations", "0",
                    forced_bad == 0, dict(forced=n_forced)))
    rows.append(Row(f"alpha inside [alpha_min, alpha_max] ({n_clamped} clamped)", f"{clamp_bad} violations", "0",
                    clamp_bad == 0, dict(clamped=n_clamped)))
    rows.append(Row(f"alpha equation ({m.alpha_method})", f"max residual {resid:.2g}", f"<= {tol:g}", resid <= tol))
    return rows


def check(model_theta, model_t, *, backend: str = "hf", mixture=None, sampling: dict | None = None,
          prompts=PROMPTS, prompts_t=None, draws: int = 2000, samples: int = 2, max_new_tokens: int = 32, p_min: float = 1e-3,
          tolerance: float | None = None, chat_template: bool = True, device=None, dtype=None, threads=None,
          batch_size: int = 8, log=print) -> Report:
    """Run the three checks; returns the Report (see the module docstring)."""
    from .api import create_optimal_sampling_model
    from .config import MixtureConfig
    from .prompts import render

    mixture = mixture or MixtureConfig()
    sampling = dict(dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0), **(sampling or {}))
    prompts, prompts_t = tuple(prompts), tuple(prompts_t or prompts)
    if len(prompts_t) != len(prompts):  # before any model loads
        raise ValueError(f"--prompt-t given {len(prompts_t)} times but --prompt {len(prompts)} times: give one "
                         "pi_t prompt per pi_theta prompt, or none")
    if backend == "vllm" and prompts_t != prompts:
        raise ValueError("--prompt-t needs --backend hf: the vllm backend runs both models on one token sequence, "
                         "so per-side prompts are refused")
    qm = create_optimal_sampling_model(model_theta, model_t, alpha_method=mixture.alpha_method, alpha=mixture.alpha,
                                       alpha_min=mixture.alpha_min, alpha_max=mixture.alpha_max,
                                       support=mixture.support, force_teacher=mixture.force_teacher,
                                       device=device, dtype=dtype, backend=backend, max_batch_size=batch_size,
                                       threads=threads)
    dtype_name = qm.engine_cfg.dtype
    tol = TOLERANCE.get(dtype_name, 1e-3) if tolerance is None else tolerance
    config = dict(model_theta=str(model_theta), model_t=str(model_t), backend=backend, device=qm.engine_cfg.device,
                  dtype=dtype_name, **asdict(mixture), **sampling, draws=draws, samples=samples,
                  max_new_tokens=max_new_tokens, p_min=p_min, tolerance=tol)
    report = Report(config=config)
    ref = Reference(qm, backend, mixture, sampling)
    prompt_ids = [(render(qm.tokenizer, p, chat_template=chat_template),
                   render(qm.tokenizer, q, chat_template=chat_template)) for p, q in zip(prompts, prompts_t)]
    log(f"qstar check: {len(prompts)} prompts x {draws} first-token draws ...")
    report.rows += first_tokens(qm, ref, prompt_ids, draws, sampling["seed"], p_min, tol)
    log(f"qstar check: recomputing {len(prompts)} x {samples} samples of up to {max_new_tokens} tokens ...")
    report.rows += recompute(qm, ref, prompt_ids, samples, max_new_tokens, sampling["seed"] + 1, tol)
    return report


# ---- command line ------------------------------------------------------------------------------
def add_parser(sub) -> argparse.ArgumentParser:
    from .cli import GROUPS, add_config_flags

    p = sub.add_parser("check", help="exactness self-test of a pair, backend, dtype and flags (PASS/FAIL table)",
                       description=__doc__.split("\n\n")[1].strip() + "\n\nDraws first tokens and compares them "
                       "with the exact behaviour distribution (chi-square), recomputes the recorded per-token "
                       "values of a few samples, checks the alpha equation. Exit 0 = every row PASS, 1 = a row "
                       "FAILs, 2 = bad input, 3 = too few --draws for a valid chi-square (the RESULT line "
                       "says how many are needed).",
                       argument_default=argparse.SUPPRESS, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = add_config_flags(p, {k: v for k, v in GROUPS.items() if k not in ("data", "output")}, FLAG_FIELDS)
    g = p.add_argument_group("check")
    g.add_argument("--prompt", action="append", dest="prompts", default=None,
                   help="a prompt to test (repeatable; default: three built-in short prompts)")
    g.add_argument("--prompt-t", action="append", dest="prompts_t", default=None,
                   help="what pi_t sees for the matching --prompt, e.g. the problem plus a reference solution "
                   "(repeatable; default: the same prompts; --backend hf only)")
    g.add_argument("--draws", type=int, default=2000, help="first-token draws per prompt for the chi-square test")
    g.add_argument("--samples", type=int, default=2, help="full samples per prompt whose values are recomputed")
    g.add_argument("--max-new-tokens", type=int, default=32, help="response tokens per recomputed sample")
    g.add_argument("--p-min", type=float, default=1e-3, help="a first-token row fails when its p-value is below "
                   "this (an exact sampler fails a row with this probability; rerun with another --seed)")
    g.add_argument("--tolerance", type=float, default=None, help="max recompute error |got - want| / max(1, |want|) "
                   f"and alpha-equation residual (default by dtype: {TOLERANCE})")
    g.add_argument("--no-chat-template", action="store_true", default=False,
                   help="use the prompts as plain text (default: the tokenizer's chat template)")
    g.add_argument("--json", default=None, help="also write the table and the details to this JSON file")
    del groups
    return p


def _options(ns: argparse.Namespace) -> dict:
    from .config import SamplingParams
    from .pipeline.config import GenerateConfig, mixture_config

    defaults = {f: GenerateConfig.__dataclass_fields__[f].default for f in FLAG_FIELDS}
    v = {**defaults, **{k: getattr(ns, k) for k in FLAG_FIELDS if hasattr(ns, k)}}
    for name in ("model_theta", "model_t"):
        if not v[name]:
            raise ValueError(f"--{name.replace('_', '-')} is required")
    mixture = mixture_config(v["alpha_method"], v["alpha"], v["alpha_min"], v["alpha_max"], v["support_top_k"],
                             v["support_top_p"], v["force_teacher"])
    sampling = dict(temperature=v["temperature"], top_k=v["top_k"], top_p=v["top_p"], min_p=v["min_p"], seed=v["seed"])
    SamplingParams(**sampling)  # its checks name a bad value
    for name, low in (("draws", 1), ("samples", 1), ("max_new_tokens", 1)):
        if getattr(ns, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(ns, name)}")
    if not 0 < ns.p_min < 1:
        raise ValueError(f"--p-min must lie in (0, 1), got {ns.p_min}")
    if ns.tolerance is not None and not ns.tolerance > 0:
        raise ValueError(f"--tolerance must be > 0, got {ns.tolerance}")
    return dict(model_theta=v["model_theta"], model_t=v["model_t"], backend=v["backend"], mixture=mixture,
                sampling=sampling, prompts=tuple(ns.prompts or PROMPTS), prompts_t=tuple(ns.prompts_t or ()),
                draws=ns.draws, samples=ns.samples,
                max_new_tokens=ns.max_new_tokens, p_min=ns.p_min, tolerance=ns.tolerance,
                chat_template=not ns.no_chat_template, device=v["device"], dtype=v["dtype"], threads=v["threads"],
                batch_size=v["batch_size"])


def run(ns: argparse.Namespace) -> int:
    """Exit code: 0 every row passes, 1 a row fails, 2 bad input (one line on stderr), 3 too few
    draws for a valid first-token test (and no row fails)."""
    try:
        opts = _options(ns)
        report = check(**opts, log=lambda msg: print(msg, file=sys.stderr))
    except (ValueError, OSError) as e:
        print(f"qstar check: error: {e}", file=sys.stderr)
        return 2
    c = report.config
    print(f"qstar check: {c['model_theta']} | {c['model_t']} | backend {c['backend']} | {c['device']} {c['dtype']} "
          f"| {c['alpha_method']} | support {c['support'] or 'off'} | force_teacher {c['force_teacher'] or 'off'}")
    print(report.table())
    if ns.json:
        Path(ns.json).write_text(json.dumps(dict(config=report.config, passed=report.passed,
                                                 draws_needed=report.needed, exit_code=report.exit_code,
                                                 rows=[asdict(r) for r in report.rows]), indent=1, default=str))
    return report.exit_code
