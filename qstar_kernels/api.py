"""Public ops `mix`, `sample` and `step` (= mix + sample + per-token gathers, one call per decode
step): validation, then the PyTorch reference, the Triton kernels or the fused CPU kernel.

Backend choice (`backend=` or env QSTAR_BACKEND): "auto" (default) runs Triton for CUDA tensors
in fp16/bf16/fp32, the fused C kernel for `step` on CPU fp32/bf16/fp16 when a C compiler is
available, and the reference otherwise; "torch" forces the reference; "triton" forces the
kernels (on CPU only under TRITON_INTERPRET=1, which is how the tests run them); "cpu" forces
the fused C kernel for `step` (`mix` and `sample` have no C path and use the reference).
Not for: models, caches or I/O (engine/).
"""
from __future__ import annotations

import os

import torch

from . import checks, controls
from .ref_mix import equation_residual as _equation_residual
from .ref_mix import log_softmax_masked, mix_reference
from .ref_sample import behaviour_logprobs, sample_reference
from .types import Mixture, Sampled, Step

from .names import BACKENDS


def _cpu_available() -> bool:
    try:
        from . import cpu_step
    except ImportError:
        return False
    return cpu_step.available()


def _pick_backend(backend: str | None, x: torch.Tensor, fused_step: bool = False) -> str:
    backend = backend or os.environ.get("QSTAR_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r} "
                         "(argument `backend` or env QSTAR_BACKEND)")
    if backend == "auto":
        from . import triton_available

        if x.dtype == torch.float64:
            return "torch"
        if x.is_cuda:
            return "triton" if triton_available() else "torch"
        return "cpu" if fused_step and _cpu_available() else "torch"
    if backend == "cpu" and (x.is_cuda or not fused_step):
        return "torch"
    if backend == "triton" and not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                         "importing qstar_kernels to run the kernels on CPU")
    return backend


def mix(logits_theta: torch.Tensor, logits_t: torch.Tensor, method: str = "kl_symmetry", *,
        alpha=0.5, alpha_min: float = 0.0, alpha_max: float = 1.0, vocab_size: int | None = None,
        support_top_k: int = 0, support_top_p: float = 1.0, force=None, force_tokens=None,
        backend: str | None = None, validate: bool = True) -> Mixture:
    """The geometric mixture q ∝ pi_theta^a * pi_t^(1-a) per row, with a chosen by `method`.

    `a` (returned as `alpha`) is the weight on **pi_theta**: a = 1 gives q = pi_theta, a = 0 gives
    q = pi_t. Methods: "fixed" (a = alpha), "entropy" (a = H_theta / (H_theta + H_t)),
    "kl_symmetry" (KL(q||pi_theta) = KL(q||pi_t), the Chernoff point), "ess_balance"
    (ESS_theta(q) = ESS_t(q)), "reverse_kl_symmetry" (KL(pi_theta||q) = KL(pi_t||q), closed form).
    Then a is clamped to [alpha_min, alpha_max] (`clamped` says where that decided a).

    Controls (controls.py; all off by default): support_top_k / support_top_p restrict both
    distributions to pi_t's top-k / nucleus set before solving (logq and the statistics are then
    those of the restricted problem; logp_theta / logp_t stay the unrestricted log-probs);
    force ((B,) bool) and force_tokens ((V,) bool: rows whose pi_t argmax is one of them) set
    a = 0 for those rows, ignoring the clamps (`forced` says where).

    logits_*: (B, V), any float dtype; math in fp32 (fp64 when given fp64). vocab_size masks
    columns >= vocab_size (padded embedding rows). validate=False skips the checks that need a
    host sync (NaN scan), for use inside a captured decode step.
    """
    a = checks.check_mix_args(logits_theta, logits_t, method, alpha, alpha_min, alpha_max,
                              vocab_size, validate)
    B, V = logits_theta.shape
    controls.check_controls(B, V, logits_theta.device, support_top_k, support_top_p, force, force_tokens)
    chosen = _pick_backend(backend, logits_theta)

    def core(xp, xt, method_, a_, force_):
        return _mix(chosen, xp, xt, method_, a_, alpha_min, alpha_max, vocab_size, force_)

    return controls.apply(core, logits_theta, logits_t, method, a, vocab_size, support_top_k,
                          support_top_p, force, force_tokens, per_token=False)


def _mix(chosen, xp, xt, method, a, alpha_min, alpha_max, vocab_size, force) -> Mixture:
    """The Mixture from the chosen backend (arguments already validated)."""
    if chosen == "triton":
        from .triton_mix import mix_triton

        return mix_triton(xp, xt, method, a, alpha_min, alpha_max, vocab_size, force)
    return mix_reference(xp, xt, method, a, alpha_min, alpha_max, vocab_size, force)


def sample(logq: torch.Tensor, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0,
           keys=None, positions=None, backend: str | None = None, validate: bool = True) -> Sampled:
    """Draw one token per row from q after temperature -> min-p -> top-k -> top-p.

    logq: (B, V) log-probabilities (e.g. Mixture.logq). temperature/top_k/top_p/min_p/seed may be
    scalars or (B,) tensors; temperature = 0 is greedy (argmax, logp_behavior = 0). The draw of
    row r depends only on (seed, keys[r], positions[r]) (Philox, Gumbel race), so it is the same
    whatever the batch. logp_behavior is the log-probability of the token under the tempered,
    truncated, renormalised distribution actually sampled.
    """
    args = checks.check_sample_args(logq, temperature, top_k, top_p, min_p, seed, keys,
                                     positions, validate)
    return _sample(logq, args, _pick_backend(backend, logq))


def _sample(logq, args, chosen) -> Sampled:
    if chosen == "triton":
        from .triton_sample import sample_triton

        tokens, lpb = sample_triton(logq, *args)
    else:
        tokens, lpb = sample_reference(logq, *args)
    return Sampled(tokens=tokens, logp_behavior=lpb)


def step(logits_theta: torch.Tensor, logits_t: torch.Tensor, method: str = "kl_symmetry", *,
         alpha=0.5, alpha_min: float = 0.0, alpha_max: float = 1.0, vocab_size: int | None = None,
         temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, keys=None, positions=None,
         support_top_k: int = 0, support_top_p: float = 1.0, force=None, force_tokens=None,
         backend: str | None = None, validate: bool = True) -> Step:
    """One decode step: `mix` then `sample`, returning only (B,) per-token values (see Step).

    Same arguments and semantics as `mix` and `sample` together (controls included); the fused
    backends never materialise the (B, V) mixture, which is what makes the step cheap.
    """
    a = checks.check_mix_args(logits_theta, logits_t, method, alpha, alpha_min, alpha_max,
                              vocab_size, validate)
    args = checks.check_sample_args(logits_theta, temperature, top_k, top_p, min_p, seed, keys,
                                    positions, validate)
    B, V = logits_theta.shape
    controls.check_controls(B, V, logits_theta.device, support_top_k, support_top_p, force, force_tokens)
    chosen = _pick_backend(backend, logits_theta, fused_step=True)

    def core(xp, xt, method_, a_, force_):
        if chosen == "cpu":
            from .cpu_step import step_cpu

            return step_cpu(xp, xt, method_, a_, alpha_min, alpha_max, vocab_size, *args, force=force_)
        if chosen == "triton":
            from .triton_step import step_triton

            return step_triton(xp, xt, method_, a_, alpha_min, alpha_max, vocab_size, *args, force=force_,
                               may_truncate=_may_truncate(temperature, top_k, top_p))
        m = _mix(chosen, xp, xt, method_, a_, alpha_min, alpha_max, vocab_size, force_)
        return Step.from_parts(m, _sample(m.logq, args, chosen))

    out = controls.apply(core, logits_theta, logits_t, method, a, vocab_size, support_top_k,
                         support_top_p, force, force_tokens, per_token=True)
    if out.passes is None:  # counted by the fused Triton step only
        out.passes = torch.full_like(out.iters, -1)
    return out


def _may_truncate(temperature, top_k, top_p) -> bool:
    """False only when plain Python values say no row needs a top-k / top-p search (tensors: True,
    decided per row on the device)."""
    if any(isinstance(v, torch.Tensor) for v in (temperature, top_k, top_p)):
        return True
    return temperature != 0 and (top_k > 0 or top_p < 1)


def behaviour(logq: torch.Tensor, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> torch.Tensor:
    """(B, V) log-probabilities of the distribution `sample` draws from (reference math, fp64 when
    given fp64): logq / temperature, then min-p -> top-k -> top-p, renormalised; temperature 0 is
    the point mass on the argmax. What `qstar check` compares sampled tokens against."""
    args = checks.check_sample_args(logq, temperature, top_k, top_p, min_p, 0, 0, 0, True)
    return behaviour_logprobs(logq, *args[:4])


def equation_residual(logits_theta: torch.Tensor, logits_t: torch.Tensor, alpha, method: str, *,
                      vocab_size: int | None = None, support_top_k: int = 0,
                      support_top_p: float = 1.0) -> torch.Tensor:
    """(B,) residual of `method`'s defining equation at the given alpha (computed elsewhere, e.g.
    read from records), on the (restricted) distributions `mix` would solve on; 0 = exact.
    kl_symmetry: |KL(q||pi_theta) - KL(q||pi_t)| / (1 + KL); ess_balance: |log ESS_theta/ESS_t|;
    entropy: |a - H_theta/(H_theta + H_t)|; reverse_kl_symmetry: |KL(pi_theta||q) -
    KL(pi_t||q)| / (1 + KL); fixed: 0. Rows forced or clamped have no equation to meet."""
    a = checks.check_mix_args(logits_theta, logits_t, method, alpha, 0.0, 1.0, vocab_size, True)
    B, V = logits_theta.shape
    controls.check_controls(B, V, logits_theta.device, support_top_k, support_top_p, None, None)
    xp, xt = logits_theta, logits_t
    if support_top_k > 0 or support_top_p < 1:
        keep = controls.support_keep(logits_t, vocab_size, support_top_k, support_top_p)
        xp, xt = xp.masked_fill(~keep, float("-inf")), xt.masked_fill(~keep, float("-inf"))
    lp, lt = log_softmax_masked(xp, vocab_size), log_softmax_masked(xt, vocab_size)
    return _equation_residual(lp, lt, a.to(lp.dtype), method)
