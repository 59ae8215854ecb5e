"""Paired ratios, a distribution-free interval for their median, and a verdict.

Pure Python (no MLX, NumPy or SciPy), so that the tooling tests check it. The
interval is the classic one from binomial order statistics: the median of a
continuous distribution lies between the l-th and the (n + 1 - l)-th smallest
of n samples with probability 1 - 2 P(B <= l - 1), B ~ Binomial(n, 1/2); l is
the largest rank whose coverage is still at least the confidence asked for.
It assumes only that the repetitions are independent draws of one distribution.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

# Fewer repetitions than this claim nothing, whatever their interval says.
MIN_REPETITIONS = 15
FASTER, SLOWER, NO_DIFFERENCE = "faster", "slower", "no difference shown"
TOO_FEW = "too few repetitions"


def binomial_cdf(k: int, n: int) -> float:
    """P(B <= k) for B ~ Binomial(n, 1/2)."""
    return sum(comb(n, i) for i in range(k + 1)) / 2**n if k >= 0 else 0.0


def median_ranks(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """The 1-based ranks (l, n + 1 - l) of the order statistics bounding the
    median with at least `confidence`; None when n is too small for any."""
    alpha = 1 - confidence
    lower = 0
    for rank in range(1, n // 2 + 1):
        if binomial_cdf(rank - 1, n) <= alpha / 2:
            lower = rank
    return (lower, n + 1 - lower) if lower else None


def coverage(n: int, lower_rank: int) -> float:
    """The exact probability that [x_(l), x_(n+1-l)] holds the median."""
    return 1 - 2 * binomial_cdf(lower_rank - 1, n)


@dataclass(frozen=True)
class RatioSummary:
    """The median of paired ratios (fused / stock), its interval, its spread."""

    n: int
    median: float
    low: float | None  # None: too few samples for a 95% interval
    high: float | None
    minimum: float
    maximum: float

    @property
    def verdict(self) -> str:
        return verdict(self.n, self.low, self.high)


def summarize(ratios: Sequence[float], confidence: float = 0.95) -> RatioSummary:
    ordered = sorted(ratios)
    n = len(ordered)
    if not n:
        raise ValueError("no ratios to summarize")
    ranks = median_ranks(n, confidence)
    low, high = (ordered[ranks[0] - 1], ordered[ranks[1] - 1]) if ranks else (None, None)
    return RatioSummary(n, statistics.median(ordered), low, high, ordered[0], ordered[-1])


def verdict(n: int, low: float | None, high: float | None) -> str:
    """ "faster" only when the interval lies wholly above 1, "slower" only when
    wholly below, and no claim at all from fewer than MIN_REPETITIONS."""
    if n < MIN_REPETITIONS or low is None or high is None:
        return TOO_FEW
    if low > 1:
        return FASTER
    if high < 1:
        return SLOWER
    return NO_DIFFERENCE


def paired_ratios(fused: Sequence[float], stock: Sequence[float]) -> list[float]:
    """fused / stock tokens per second, repetition by repetition."""
    if len(fused) != len(stock):
        raise ValueError(f"unpaired: {len(fused)} fused against {len(stock)} stock")
    return [f / s for f, s in zip(fused, stock, strict=True)]
