"""The models case's statistics: the median's interval from order statistics and the verdict.

Pure functions only: nothing here needs MLX, NumPy or SciPy.
"""

import pytest
from mlxrtools.payloads.model_stats import (
    FASTER,
    NO_DIFFERENCE,
    SLOWER,
    TOO_FEW,
    binomial_cdf,
    coverage,
    median_ranks,
    paired_ratios,
    summarize,
    verdict,
)


def test_the_binomial_cdf_is_exact() -> None:
    assert binomial_cdf(-1, 15) == 0.0
    assert binomial_cdf(15, 15) == 1.0
    assert binomial_cdf(3, 15) == 576 / 32768  # 1 + 15 + 105 + 455
    assert binomial_cdf(0, 6) == 1 / 64


@pytest.mark.parametrize(
    ("n", "ranks"),
    # The published table of distribution-free 95% intervals for the median.
    [(6, (1, 6)), (10, (2, 9)), (15, (4, 12)), (20, (6, 15)), (30, (10, 21))],
)
def test_the_ranks_match_the_published_table(n: int, ranks: tuple[int, int]) -> None:
    assert median_ranks(n) == ranks
    assert coverage(n, ranks[0]) >= 0.95
    assert coverage(n, ranks[0] + 1) < 0.95  # the interval is the narrowest that covers


def test_too_few_samples_have_no_interval() -> None:
    assert median_ranks(5) is None
    s = summarize([1.0, 1.1, 1.2, 1.3, 1.4])
    assert (s.low, s.high, s.median) == (None, None, 1.2)


def test_the_interval_of_known_data() -> None:
    ratios = [1.00 + 0.01 * i for i in range(15)]  # 1.00 .. 1.14, shuffled below
    s = summarize(list(reversed(ratios)))
    assert s.median == pytest.approx(1.07)
    assert (s.low, s.high) == (pytest.approx(1.03), pytest.approx(1.11))  # 4th and 12th
    assert (s.minimum, s.maximum) == (pytest.approx(1.00), pytest.approx(1.14))
    assert s.verdict == FASTER


def test_the_verdict_claims_only_what_the_interval_shows() -> None:
    assert verdict(15, 1.001, 1.2) == FASTER
    assert verdict(15, 1.0, 1.2) == NO_DIFFERENCE  # the bound must exceed 1, not touch it
    assert verdict(15, 0.9, 1.1) == NO_DIFFERENCE
    assert verdict(15, 0.8, 0.999) == SLOWER
    assert verdict(14, 1.5, 1.6) == TOO_FEW
    assert verdict(30, None, None) == TOO_FEW


def test_an_outlier_does_not_move_the_verdict() -> None:
    ratios = [0.98, 0.99, 1.0, 1.01, 1.02] * 3
    assert summarize(ratios).verdict == NO_DIFFERENCE
    assert summarize([*ratios[:-1], 50.0]).verdict == NO_DIFFERENCE


def test_ratios_are_paired_by_repetition() -> None:
    assert paired_ratios([110.0, 90.0], [100.0, 100.0]) == [1.1, 0.9]
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])
