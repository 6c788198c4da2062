"""qstar_kernels: exact math of the geometric mixture q ∝ pi_theta^a * pi_t^(1-a) and its sampler.

Public ops (other tools import these names): `mix`, `sample`, `step`, `behaviour`,
`equation_residual`, `Mixture`, `Sampled`, `Step`, `METHODS`.
`a` / `alpha` is always the weight on pi_theta. Tensors in, tensors out; no models, no I/O.
"""
from __future__ import annotations

import functools

from .lazy import lazy_getattr
from .names import BACKENDS, METHODS

# the ops load torch: imported on first use, so `METHODS` / `BACKENDS` cost nothing
_LAZY = {"behaviour": "api", "equation_residual": "api", "mix": "api", "sample": "api", "step": "api",
         "Mixture": "types", "Sampled": "types", "Step": "types"}

__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = ["mix", "sample", "step", "behaviour", "equation_residual", "Mixture", "Sampled", "Step", "METHODS", "BACKENDS",
           "triton_available"]


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True
