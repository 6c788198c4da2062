"""How per-token values ride back through vLLM's logprobs: extra logit columns, one number each.

After qstar has drawn token y for a row, the row handed to vLLM's sampler is rewritten as

    column y                  0                      (vLLM, greedy, picks y; its logprob is 0)
    other vocab columns       -inf
    column W + f              -OFFSET - |value_f|    (the magnitude of field f)
    column W + F + f          -OFFSET - [value_f < 0] (its sign)

with W = the per-model logits width and F = len(FIELDS). Every extra column lies at or below
-OFFSET = -112, so exp() of it underflows to exactly 0 in fp32: it is never sampled and leaves
log_softmax of the row unchanged (max 0, sum exactly 1, log 1 = 0), so vLLM's
"processed_logprobs" of column c is the column itself, bit for bit. Readback error is fp32
rounding of OFFSET + |value|: <= 3.9e-6 for |value| < 16, <= 7.7e-6 below 144, relative
~6e-8 beyond. +-inf travels as -inf magnitude; NaN (never produced by qstar_kernels) would
read back as inf.
Not for: sampling or the mixture math (qstar_kernels), vLLM plumbing (logits_processor.py).
"""
from __future__ import annotations

import math

import torch

from ...outputs import TOKEN_FIELDS

FIELDS = TOKEN_FIELDS          # per-token values in SampleOutput order
OFFSET = 112.0                 # exp(-112) = 2e-49: below fp32's smallest subnormal, rounds to 0
NUM_COLUMNS = 2 * len(FIELDS)  # magnitude + sign per field
NUM_LOGPROBS = NUM_COLUMNS + 1  # what each request asks vLLM for: the stat columns + the token


def encode(values: torch.Tensor) -> torch.Tensor:
    """(B, F) per-token values -> (B, 2F) logit columns (see module docstring)."""
    mag = torch.where(torch.isnan(values), torch.full_like(values, math.inf), values.abs())
    neg = (values < 0).to(values.dtype)
    return torch.cat([-OFFSET - mag, -OFFSET - neg], dim=1)


def decode(logprobs: dict[int, float], width: int) -> list[float]:
    """One position's {column id: logprob} (as vLLM returns it) -> the F values, in FIELDS order.

    A magnitude column missing from the dict was -inf (vLLM's top-k returned another -inf
    column in its place): the value is infinite.
    """
    F = len(FIELDS)
    out = []
    for f in range(F):
        m = logprobs.get(width + f, -math.inf)
        s = logprobs.get(width + F + f, -OFFSET)
        mag = -OFFSET - float(m)
        out.append(-mag if (-OFFSET - float(s)) > 0.5 else mag)
    return out
