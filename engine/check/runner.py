"""The three checks of `qstar check` on a loaded pair (see engine/check/__init__.py).

Not for: the command line (cli.py) or the statistics (stats.py).
"""
from __future__ import annotations

from dataclasses import asdict

import torch

from .report import PROMPTS, TOLERANCE, Report, Row
from .stats import chi_square, rel_err

# per-token values recomputed from the teacher-forced pass (SampleOutput field names)
VALUES = ("alpha", "logp_theta", "logp_t", "logq", "logp_behavior", "kl_theta", "kl_t", "ess_theta",
          "ess_t", "entropy_q")

class Reference:
    """Teacher-forced logits of both models (float64), and the exact mixture at each position."""

    def __init__(self, qm, backend: str, mixture, sampling: dict):
        from ..loading import load_model, token_table

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
        self.cross = getattr(qm.pair, "cross", None)  # cross-tokenizer mode: the teacher is carried

    @torch.no_grad()
    def pair_logits(self, ids_theta: list[int], ids_t: list[int], response: list[int]):
        """(T, W) float64 logits of both models at each response position (T = len(response)),
        teacher-forced. Cross-tokenizer mode: at position k the teacher reads its prompt plus its
        tokenizer's full encoding of response[:k]'s bytes (no window, no rollback: the reference
        the engine's incremental views must match), carried onto θ's vocabulary in float64."""
        T = len(response)
        if self.cross is None:
            return self.logits(ids_theta + response[:-1], ids_t + response[:-1], T)
        from qstar_kernels.carry import carry

        m_theta = self.models[0]
        x = torch.tensor([ids_theta + response[:-1]], device=next(m_theta.parameters()).device)
        lg_theta = m_theta(input_ids=x).logits[0, -T:, :self.width].double().cpu()
        model = self.models[1]
        dev = next(model.parameters()).device
        index = torch.tensor(self.cross.index)
        rows = []
        for k in range(T):
            x = torch.tensor([ids_t + self.cross.teacher_ids(response[:k])], device=dev)
            rows.append(model(input_ids=x).logits[0, -1].double().cpu())
        lg_t = carry(torch.stack(rows), index, self.width, self.cross.n_real_t)
        return lg_theta, lg_t

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
        lg_theta, lg_t = ref.pair_logits(ids_p, ids_q, [0])
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
                       seed=seed, speculative=s["speculative"], draft=s["draft"])
    rows = _errors(outs)
    if rows:
        return rows
    errs = {k: 0.0 for k in VALUES}
    n_tok = outside = forced_mismatch = forced_bad = clamp_bad = n_forced = n_clamped = boundary = 0
    ill_conditioned = 0
    resid = 0.0
    pits = []  # randomized PIT of every token under its teacher-forced b: iid uniform iff exact
    gen = torch.Generator().manual_seed(seed)
    for o in outs:
        T = len(o.token_ids)
        if T == 0:
            continue
        ids_p, ids_q = prompt_ids[o.prompt_index]
        lg_theta, lg_t = ref.pair_logits(ids_p, ids_q, o.token_ids)
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
            if p_var is None:
                pits.append(pit(beh_full, tok[:, 0], gen))
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
    rows.append(_pit_row(torch.cat(pits) if pits else torch.zeros(0), 1e-3))
    return rows


def pit(logb: torch.Tensor, tokens: torch.Tensor, gen) -> torch.Tensor:
    """(T,) randomized probability integral transform of tokens (T,) under b (T, V) (log-probs):
    F(x-) + U * b(x), uniform on (0, 1) exactly when each token is drawn from its b."""
    p = logb.exp()
    cell = p.gather(1, tokens[:, None])[:, 0]
    return (p.cumsum(-1) - p).gather(1, tokens[:, None])[:, 0] + torch.rand(len(tokens), generator=gen,
                                                                            dtype=p.dtype) * cell


def _pit_row(u: torch.Tensor, p_min: float, bins: int = 10) -> Row:
    """Every position of every recomputed sample (speculative rounds included) against uniform."""
    name = f"every token ~ teacher-forced b (PIT, {len(u)} tokens)"
    cs = chi_square(torch.histc(u.double(), bins, 0, 1), torch.full((bins,), 1 / bins, dtype=torch.float64), len(u))
    if not cs.valid:
        return Row(name, f"{cs.needed} tokens needed", f"p > {p_min:g}", True, dict(needed=cs.needed))
    return Row(name, f"p = {cs.p:.3g}", f"p > {p_min:g}", cs.p > p_min, dict(chi2=cs.stat, dof=cs.dof, p=cs.p))


def check(model_theta, model_t, *, backend: str = "hf", mixture=None, sampling: dict | None = None,
          prompts=PROMPTS, prompts_t=None, draws: int = 2000, samples: int = 2, max_new_tokens: int = 32, p_min: float = 1e-3,
          tolerance: float | None = None, chat_template: bool = True, device=None, dtype=None, threads=None,
          batch_size: int = 8, cross_tokenizer: bool = False, log=print) -> Report:
    """Run the three checks; returns the Report (see the module docstring)."""
    from ..api import create_optimal_sampling_model
    from ..config import MixtureConfig
    from ..prompts import render

    mixture = mixture or MixtureConfig()
    sampling = dict(dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, speculative=0, draft="auto"),
                    **(sampling or {}))
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
                                       threads=threads, cross_tokenizer=cross_tokenizer)
    dtype_name = qm.engine_cfg.dtype
    tol = TOLERANCE.get(dtype_name, 1e-3) if tolerance is None else tolerance
    config = dict(model_theta=str(model_theta), model_t=str(model_t), backend=backend, device=qm.engine_cfg.device,
                  dtype=dtype_name, **asdict(mixture), **sampling, draws=draws, samples=samples,
                  max_new_tokens=max_new_tokens, p_min=p_min, tolerance=tol, cross_tokenizer=cross_tokenizer)
    if qm.pair.cross is not None:
        config.update(qm.pair.cross.summary())
    report = Report(config=config)
    ref = Reference(qm, backend, mixture, sampling)
    prompt_ids = [(render(qm.tokenizer, p, chat_template=chat_template),
                   render(qm.pair.tokenizer_t or qm.tokenizer, q, chat_template=chat_template))
                  for p, q in zip(prompts, prompts_t)]
    log(f"qstar check: {len(prompts)} prompts x {draws} first-token draws ...")
    report.rows += first_tokens(qm, ref, prompt_ids, draws, sampling["seed"], p_min, tol)
    log(f"qstar check: recomputing {len(prompts)} x {samples} samples of up to {max_new_tokens} tokens ...")
    report.rows += recompute(qm, ref, prompt_ids, samples, max_new_tokens, sampling["seed"] + 1, tol)
    return report


