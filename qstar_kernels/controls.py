"""Mixture controls wrapped around any backend's `mix` / `step`: the support restriction to pi_t's
top-k / nucleus set and forced-teacher rows (a = 0).

Support S (support_top_k K, support_top_p P): pi_t's top-K tokens, then the smallest prefix of
them, most likely first (ties by token id), whose mass renormalised on the top-K reaches P — the
sampler's own top-k -> top-p rule (ref_sample.prefix_keep) applied to pi_t. Both logits are set to
-inf outside S, so the backend solves alpha and computes q, its statistics, logq and
logp_behavior on the restricted, renormalised distributions; logp_theta / logp_t are then
replaced by the unrestricted models' log-probs (what importance weights need).

Forced rows (force (B,) bool, or pi_t's argmax in force_tokens (V,) bool) go to the backend with
the rest: every backend (reference, Triton kernel, fused C kernel) computes a forced row as
method "fixed" at a = 0 with no clamps, in the same launch, so q = pi_t (restricted when S is
set) and `forced` records it; the draw uses the same (seed, key, position) counter. A row whose
pi_theta has no mass inside S is forced too (the restricted pi_theta does not exist there).

Everything here is tensor ops on the logits' device with no host sync on CUDA (a stable sort of
pi_t's row for S). On CPU, where host syncs are free and a full sort costs ~10x the fused step,
S comes from a top-k of candidates.
Not for: the mixture math itself (ref_mix / triton_mix / cpu_step) or parsing user strings.
"""
from __future__ import annotations

import numbers

import torch

from .ref_mix import compute_dtype, log_softmax_masked
from .ref_sample import prefix_keep

NEG_INF = float("-inf")


def check_controls(B: int, V: int, device, support_top_k, support_top_p, force, force_tokens) -> None:
    if isinstance(support_top_k, bool) or not isinstance(support_top_k, numbers.Integral) or support_top_k < 0:
        raise ValueError(f"support_top_k must be an int >= 0 (0 = off), got {support_top_k!r}")
    if isinstance(support_top_p, bool) or not isinstance(support_top_p, numbers.Real) or not 0.0 < support_top_p <= 1.0:
        raise ValueError(f"support_top_p must lie in (0, 1] (1 = off), got {support_top_p!r}")
    for name, t, shape in (("force", force, (B,)), ("force_tokens", force_tokens, (V,))):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dtype != torch.bool or tuple(t.shape) != shape:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a bool tensor of shape {shape}, got {got}")
        if t.device != torch.device(device):
            raise ValueError(f"{name} is on {t.device} but the logits are on {device}")


def support_keep(logits_t: torch.Tensor, vocab_size: int | None, top_k: int, top_p: float) -> torch.Tensor:
    """(B, V) bool: pi_t's top-k set, then its nucleus (see the module docstring)."""
    # On CPU the mass sums run in float64: the nucleus boundary is a cumulative sum, and fp32
    # rounding of it could move the boundary token between the two (equivalent) ways of
    # computing the set. (Comparisons are exact in either precision.)
    x = logits_t.to(compute_dtype(logits_t))
    B, V = x.shape
    top_k, top_p = min(int(top_k), V), float(top_p)  # a k beyond V keeps everything
    if vocab_size is not None and vocab_size < V:
        x = x.clone()
        x[:, vocab_size:] = NEG_INF
    if not x.is_cuda:
        return _support_keep_candidates(x, top_k, top_p)
    return _support_keep_sorted(x, top_k, top_p)


def _support_keep_sorted(x, top_k: int, top_p: float) -> torch.Tensor:
    """The definition: a stable sort of the whole row (device ops only; what CUDA runs)."""
    B = x.shape[0]
    k = torch.full((B,), top_k, dtype=torch.int64, device=x.device)
    p = torch.full((B,), top_p, dtype=x.dtype, device=x.device)
    return prefix_keep(x, k, p, torch.zeros_like(p)) & (x > NEG_INF)


CANDIDATES = (1024, 16384)  # top-p alone: sort only this many of the most likely tokens first


def _support_keep_candidates(x, top_k: int, top_p: float, tries=CANDIDATES) -> torch.Tensor:
    """The same set without sorting the whole row (CPU, where a full sort is ~10x the fused step):
    take the K0 most likely tokens (K0 = top_k, else tries[0]) plus every tie of the K0-th,
    sort those by (-x, id), apply the rule; a row whose nucleus reaches past the candidates
    (their mass < top_p) is redone with the next size, then by the full sort. Host syncs here
    are free on CPU."""
    B, V = x.shape
    k0 = min(V, top_k if top_k > 0 else tries[0])
    kth = torch.topk(x, k0, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    cand = (x >= kth) & (x > NEG_INF)
    counts = cand.sum(-1)
    width = int(counts.max())
    rows, cols = cand.nonzero(as_tuple=True)  # row-major: ids ascending within a row
    slot = torch.arange(rows.numel()) - (counts.cumsum(0) - counts)[rows]
    vals = torch.full((B, width), NEG_INF, dtype=torch.float64)
    ids = torch.full((B, width), V, dtype=torch.int64)  # padding lands in a spare column V
    vals[rows, slot] = x[rows, cols].double()
    ids[rows, slot] = cols
    sv, order = torch.sort(vals, dim=-1, descending=True, stable=True)  # ties keep id order
    keep = sv > NEG_INF
    if top_k > 0:
        keep &= torch.arange(width)[None, :] < top_k
    redo = torch.zeros(B, dtype=torch.bool)
    if top_p < 1:
        kept = torch.where(keep, sv, NEG_INF)
        # as prefix_keep's softmax: exp(s - max) / sum, so exact ties give the same boundary
        top = sv[:, :1].clamp_min(-torch.finfo(torch.float64).max)
        total = torch.exp((kept if top_k > 0 else x.double()) - top).sum(-1, keepdim=True)  # top-k: renormalised on it
        probs = torch.exp(kept - top) / total
        before = torch.cumsum(probs, -1) - probs
        if top_k == 0:
            redo = probs.sum(-1) < top_p  # the nucleus may go on past the candidates
        keep &= before < top_p
    out = torch.zeros((B, V + 1), dtype=torch.bool).scatter_(1, ids.gather(1, order), keep)[:, :V]
    if bool(redo.any()):
        more = tries[1:] if top_k == 0 and k0 < V else ()
        out[redo] = (_support_keep_candidates(x[redo], top_k, top_p, more) if more
                     else _support_keep_sorted(x[redo].double(), top_k, top_p))
    return out


def _model_logp(logits: torch.Tensor, vocab_size: int | None, tokens: torch.Tensor | None):
    """Unrestricted log-probs: (B, V) when tokens is None, else (B,) at the tokens."""
    if tokens is None:
        return log_softmax_masked(logits, vocab_size)
    x = logits[:, :vocab_size] if vocab_size is not None else logits
    x = x.to(compute_dtype(logits))
    return x.gather(1, tokens[:, None]).squeeze(1) - torch.logsumexp(x, -1)


def apply(core, logits_theta, logits_t, method, alpha, vocab_size, support_top_k, support_top_p,
          force, force_tokens, per_token: bool):
    """core(xp, xt, method, alpha, force) -> Mixture or Step, force a (B,) bool tensor or None
    (every backend takes it natively: forced rows are "fixed" at a = 0, no clamps, in the same
    launch). per_token: Step (gather the unrestricted logp at the tokens) or Mixture.
    With every control off the backend runs once, untouched (force None), and forced is all False."""
    B = logits_theta.shape[0]
    restricted = support_top_k > 0 or support_top_p < 1.0
    if not restricted and force is None and force_tokens is None:
        out = core(logits_theta, logits_t, method, alpha, None)
        out.forced = torch.zeros_like(out.clamped)
        return out
    xp, xt = logits_theta, logits_t
    forced = torch.zeros(B, dtype=torch.bool, device=xp.device) if force is None else force.clone()
    if restricted:
        keep = support_keep(logits_t, vocab_size, support_top_k, support_top_p)
        xt = logits_t.masked_fill(~keep, NEG_INF)
        inside = logits_theta.masked_fill(~keep, NEG_INF)
        dead = ~(inside > NEG_INF).any(1)  # pi_theta has no mass in S: only pi_t is defined there
        xp = torch.where(dead[:, None], logits_theta, inside) if xp.is_cuda or bool(dead.any()) else inside
        forced |= dead
    if force_tokens is not None:
        width = xt.shape[1] if vocab_size is None else vocab_size
        forced |= force_tokens[logits_t[:, :width].argmax(-1)]
    out = core(xp, xt, method, alpha, forced)
    if restricted:
        tokens = out.tokens if per_token else None
        out.logp_theta = _model_logp(logits_theta, vocab_size, tokens)
        out.logp_t = _model_logp(logits_t, vocab_size, tokens)
    out.forced = forced
    return out
