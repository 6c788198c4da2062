"""The statistics of `qstar check`: the binned chi-square test and the relative error.

Not for: running models (runner.py) or the command line (cli.py).
"""
from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

import torch

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
