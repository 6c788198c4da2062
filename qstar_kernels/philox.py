"""Counter-based randomness: Philox4x32-10, bit-identical to Triton's `tl.philox`.

The uniform for token y of a row is u = philox(seed; c0=y, c1=position, c2=key_lo, c3=key_hi)[0]
mapped into the open interval (0, 1) as (top 23 bits + 0.5) * 2**-23, so it depends only on
(seed, key, position, y): never on batch composition, order or device. uint32 arithmetic is
emulated in int64 (products split in 16-bit halves so nothing overflows).
Not for: choosing which tokens race (ref_sample.py).
"""
from __future__ import annotations

import math

import torch

M32 = 0xFFFFFFFF
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
N_ROUNDS = 10
# u lies in [2^-24, 1 - 2^-24], so the Gumbel noise -log(-log u) lies in [G_MIN, G_MAX].
G_MIN = -math.log(-math.log(2.0**-24))
G_MAX = -math.log(-math.log1p(-(2.0**-24)))


def _mulhilo_split(a: torch.Tensor, c: int):
    """(hi, lo) 32-bit halves of a * c (a in [0, 2^32), c a 32-bit constant), no overflow."""
    ah, al = a >> 16, a & 0xFFFF
    hi = (ah * c + ((al * c) >> 16)) >> 16
    lo = ((((ah * c) & 0xFFFF) << 16) + al * c) & M32
    return hi, lo


def _mulhilo_wrap(a: torch.Tensor, c: int):
    """The same with one multiply: the int64 product wraps to the exact 64-bit bit pattern."""
    prod = a * c
    return (prod >> 32) & M32, prod & M32


def _wrap_is_exact() -> bool:
    a = torch.tensor([0xFFFFFFFF, 0x89ABCDEF, 12345], dtype=torch.int64)
    return all(torch.equal(x, y) for x, y in zip(_mulhilo_wrap(a, ROUND_A), _mulhilo_split(a, ROUND_A)))


# 64-bit multiplies wrap on every platform torch supports; the check keeps us honest if not
_mulhilo = _mulhilo_wrap if _wrap_is_exact() else _mulhilo_split


def philox(seed, c0, c1, c2, c3):
    """First output word of Philox4x32-10 for int64 tensors holding uint32 values."""
    k0, k1 = seed & M32, (seed >> 32) & M32
    for _ in range(N_ROUNDS):
        hi_a, lo_a = _mulhilo(c0, ROUND_A)
        hi_b, lo_b = _mulhilo(c2, ROUND_B)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + KEY_A) & M32, (k1 + KEY_B) & M32
    return c0


def uniform(seed, key, position, token) -> torch.Tensor:
    """u in (0, 1) (fp32) for int64 tensors broadcast together."""
    bits = philox(seed, token & M32, position & M32, key & M32, (key >> 32) & M32)
    return ((bits >> 9).to(torch.float32) + 0.5) * (2.0**-23)


def gumbel(seed, key, position, token) -> torch.Tensor:
    """Standard Gumbel noise -log(-log u) (fp32)."""
    return -torch.log(-torch.log(uniform(seed, key, position, token)))
