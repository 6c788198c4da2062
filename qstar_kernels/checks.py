"""Argument validation at the qstar_kernels boundary.

Every error a caller can cause is a ValueError naming the argument, the bad value and the fix.
Not for: anything inside the math (the kernels trust what passed these checks).
"""
from __future__ import annotations

import numbers

import torch

from .types import METHODS


def _as_row_tensor(name: str, value, batch: int, dtype, device) -> torch.Tensor:
    """A scalar or (B,) value as a (B,) tensor on `device`. A Python number becomes a device-side
    fill (no host->device copy, nothing to wait for); a tensor is used where it lies."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return torch.full((batch,), value, dtype=dtype, device=device)
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.dim() == 0:
        return t.expand(batch).contiguous()
    if t.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or a ({batch},) tensor, got shape {tuple(t.shape)}")
    return t.contiguous()


def _check_range(name: str, t, lo: float, hi: float, hint: str) -> None:
    """t: a Python number (checked on the host) or a tensor (a device reduction + one sync)."""
    if isinstance(t, numbers.Number):
        if not lo <= t <= hi:  # also catches NaN
            raise ValueError(f"{name} must lie in [{lo}, {hi}], got {t!r}; {hint}")
        return
    bad = ~((t >= lo) & (t <= hi))  # also catches NaN
    if bool(bad.any()):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {t[bad][0].item()!r}; {hint}")


def check_logits(name: str, x: torch.Tensor, finite_check: bool) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, V), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape (B, V) with B, V >= 1, got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if not finite_check:
        return
    if bool(torch.isnan(x).any()):
        raise ValueError(f"{name} contains NaN (first at row {int(torch.isnan(x).any(1).nonzero()[0])}); "
                         "check the model's forward pass / dtype overflow")
    if bool((x == float("inf")).any()):
        raise ValueError(f"{name} contains +inf; logits must be finite or -inf (masked)")


def check_mix_args(logits_theta, logits_t, method, alpha, alpha_min, alpha_max, vocab_size, validate):
    check_logits("logits_theta", logits_theta, validate)
    check_logits("logits_t", logits_t, validate)
    if logits_theta.shape != logits_t.shape:
        raise ValueError(f"logits_theta and logits_t must have the same shape, got "
                         f"{tuple(logits_theta.shape)} and {tuple(logits_t.shape)}")
    if logits_theta.device != logits_t.device:
        raise ValueError(f"logits on different devices: {logits_theta.device} and {logits_t.device}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    B, V = logits_theta.shape
    if vocab_size is not None and not (isinstance(vocab_size, int) and 1 <= vocab_size <= V):
        raise ValueError(f"vocab_size must be an int in [1, {V}] (the logits width), got {vocab_size!r}")
    if not (0.0 <= alpha_min <= alpha_max <= 1.0):
        raise ValueError(f"need 0 <= alpha_min <= alpha_max <= 1, got alpha_min={alpha_min!r}, "
                         f"alpha_max={alpha_max!r}")
    dtype = torch.float64 if logits_theta.dtype == torch.float64 else torch.float32
    hint = "alpha is the weight on pi_theta (1 = policy only, 0 = teacher only)"
    if isinstance(alpha, numbers.Number):  # checked on the host: validate=False stays sync-free
        _check_range("alpha", float(alpha), 0.0, 1.0, hint)
    a = _as_row_tensor("alpha", alpha, B, dtype, logits_theta.device)
    if validate and not isinstance(alpha, numbers.Number):
        _check_range("alpha", a, 0.0, 1.0, hint)
    if validate:
        width = V if vocab_size is None else vocab_size
        for name, x in (("logits_theta", logits_theta), ("logits_t", logits_t)):
            dead = ~(x[:, :width] > float("-inf")).any(1)
            if bool(dead.any()):
                raise ValueError(f"{name} row {int(dead.nonzero()[0])} is -inf everywhere; "
                                 "every row needs at least one finite logit")
    return a


def check_sample_args(logq, temperature, top_k, top_p, min_p, seed, keys, positions, validate):
    check_logits("logq", logq, validate)
    B, dev = logq.shape[0], logq.device
    dtype = torch.float64 if logq.dtype == torch.float64 else torch.float32
    temp = _as_row_tensor("temperature", temperature, B, dtype, dev)
    topk = _as_row_tensor("top_k", top_k, B, torch.int64, dev)
    topp = _as_row_tensor("top_p", top_p, B, dtype, dev)
    minp = _as_row_tensor("min_p", min_p, B, dtype, dev)
    seeds = _as_row_tensor("seed", seed, B, torch.int64, dev)
    if keys is None or positions is None:
        raise ValueError("keys and positions are required: the draw of row r depends only on "
                         "(seed, keys[r], positions[r]); pass e.g. keys=torch.arange(B), positions=step")
    keys = _as_row_tensor("keys", keys, B, torch.int64, dev)
    positions = _as_row_tensor("positions", positions, B, torch.int64, dev)
    if validate:
        _check_range("temperature", temp, 0.0, float("inf"), "use 0 for greedy, 1 for q itself")
        _check_range("top_p", topp, 0.0, 1.0, "use 1.0 to disable nucleus truncation")
        bad = topp == 0
        if bool(bad.any()):
            raise ValueError("top_p must be > 0 (a nucleus of mass 0 is empty), got 0.0; use 1.0 to disable")
        _check_range("min_p", minp, 0.0, 1.0, "use 0.0 to disable")
        if bool((topk < 0).any()):
            raise ValueError(f"top_k must be >= 0 (0 disables), got {int(topk.min())}")
        if bool(((positions < 0) | (positions >= 2**32)).any()):
            raise ValueError("positions must lie in [0, 2**32)")
    return temp, topk, topp, minp, seeds, keys, positions
