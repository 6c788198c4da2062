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

from . import checks
from .ref_mix import mix_reference
from .ref_sample import sample_reference
from .types import Mixture, Sampled, Step

BACKENDS = ("auto", "torch", "triton", "cpu")


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
        backend: str | None = None, validate: bool = True) -> Mixture:
    """The geometric mixture q ∝ pi_theta^a * pi_t^(1-a) per row, with a chosen by `method`.

    `a` (returned as `alpha`) is the weight on **pi_theta**: a = 1 gives q = pi_theta, a = 0 gives
    q = pi_t. Methods: "fixed" (a = alpha), "entropy" (a = H_theta / (H_theta + H_t)),
    "kl_symmetry" (KL(q||pi_theta) = KL(q||pi_t), the Chernoff point), "ess_balance"
    (ESS_theta(q) = ESS_t(q)), "reverse_kl_symmetry" (KL(pi_theta||q) = KL(pi_t||q), closed form).
    Then a is clamped to [alpha_min, alpha_max] (`clamped` says where that decided a).

    logits_*: (B, V), any float dtype; math in fp32 (fp64 when given fp64). vocab_size masks
    columns >= vocab_size (padded embedding rows). validate=False skips the checks that need a
    host sync (NaN scan), for use inside a captured decode step.
    """
    a = checks.check_mix_args(logits_theta, logits_t, method, alpha, alpha_min, alpha_max,
                              vocab_size, validate)
    if _pick_backend(backend, logits_theta) == "triton":
        from .triton_mix import mix_triton

        return mix_triton(logits_theta, logits_t, method, a, alpha_min, alpha_max, vocab_size)
    return mix_reference(logits_theta, logits_t, method, a, alpha_min, alpha_max, vocab_size)


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
    if _pick_backend(backend, logq) == "triton":
        from .triton_sample import sample_triton

        tokens, lpb = sample_triton(logq, *args)
    else:
        tokens, lpb = sample_reference(logq, *args)
    return Sampled(tokens=tokens, logp_behavior=lpb)


def step(logits_theta: torch.Tensor, logits_t: torch.Tensor, method: str = "kl_symmetry", *,
         alpha=0.5, alpha_min: float = 0.0, alpha_max: float = 1.0, vocab_size: int | None = None,
         temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, keys=None, positions=None,
         backend: str | None = None, validate: bool = True) -> Step:
    """One decode step: `mix` then `sample`, returning only (B,) per-token values (see Step).

    Same arguments and semantics as `mix` and `sample` together; the fused backends never
    materialise the (B, V) mixture, which is what makes the step cheap.
    """
    a = checks.check_mix_args(logits_theta, logits_t, method, alpha, alpha_min, alpha_max,
                              vocab_size, validate)
    args = checks.check_sample_args(logits_theta, temperature, top_k, top_p, min_p, seed, keys,
                                    positions, validate)
    chosen = _pick_backend(backend, logits_theta, fused_step=True)
    if chosen == "cpu":
        from .cpu_step import step_cpu

        return step_cpu(logits_theta, logits_t, method, a, alpha_min, alpha_max, vocab_size, *args)
    m = mix(logits_theta, logits_t, method, alpha=a, alpha_min=alpha_min, alpha_max=alpha_max,
            vocab_size=vocab_size, backend=chosen, validate=False)
    s = sample(m.logq, temperature=args[0], top_k=args[1], top_p=args[2], min_p=args[3],
               seed=args[4], keys=args[5], positions=args[6], backend=chosen, validate=False)
    return Step.from_parts(m, s)
