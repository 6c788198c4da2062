"""qstar_kernels: exact math of the geometric mixture q ∝ pi_theta^a * pi_t^(1-a) and its sampler.

Public ops (other tools import these names): `mix`, `sample`, `step`, `behaviour`,
`equation_residual`, `Mixture`, `Sampled`, `Step`, `METHODS`.
`a` / `alpha` is always the weight on pi_theta. Tensors in, tensors out; no models, no I/O.
"""
from __future__ import annotations

import functools
import importlib

from .names import BACKENDS, METHODS

# the ops load torch: imported on first use, so `METHODS` / `BACKENDS` cost nothing
_LAZY = {"behaviour": "api", "equation_residual": "api", "mix": "api", "sample": "api", "step": "api",
         "Mixture": "types", "Sampled": "types", "Step": "types"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["mix", "sample", "step", "behaviour", "equation_residual", "Mixture", "Sampled", "Step", "METHODS", "BACKENDS",
           "triton_available"]


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True
