from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from eval.stats import (
    binomial_two_sided_half,
    binomial_two_sided_half_log10,
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_test_log10_p,
    sign_test,
)


def _pairs(only_a: int, only_b: int, both: int, neither: int) -> tuple[list[bool], list[bool]]:
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


@pytest.mark.parametrize(
    ("only_a", "only_b"), [(12, 3), (3, 12), (5, 5), (1, 0), (0, 7), (40, 22), (140, 0), (300, 250)]
)
def test_mcnemar_matches_scipy_binomtest(only_a: int, only_b: int) -> None:
    a, b = _pairs(only_a, only_b, both=20, neither=9)
    expected = binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_edge_cases() -> None:
    a, b = _pairs(0, 0, both=10, neither=3)
    assert mcnemar_exact(a, b) == 1.0  # no discordant pair: no evidence either way
    far = mcnemar_exact(*_pairs(140, 0, 0, 0))
    assert 0 < far < 1e-40  # exact in the far tail, not rounded to 0
    with pytest.raises(ValueError, match="binary"):
        mcnemar_exact([0.5, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="length"):
        mcnemar_exact([True], [True, False])


def test_sign_test_equals_mcnemar_on_binary_and_drops_ties() -> None:
    a, b = _pairs(9, 2, both=5, neither=5)
    assert sign_test(a, b) == mcnemar_exact(a, b)
    assert sign_test([0.9, 0.8, 0.5], [0.1, 0.8, 0.4]) == pytest.approx(binomtest(2, 2).pvalue)


def test_bootstrap_is_seeded_and_degenerate_when_differences_are_constant() -> None:
    a, b = _pairs(12, 3, both=20, neither=9)
    first = paired_bootstrap_ci(a, b, seed=7)
    assert first == paired_bootstrap_ci(a, b, seed=7)
    assert first.diff == pytest.approx((12 - 3) / 44)
    assert first.low < first.diff < first.high
    constant = paired_bootstrap_ci([1.0] * 30, [0.5] * 30)
    assert constant.low == constant.high == pytest.approx(0.5)


def test_bootstrap_ci_covers_the_true_difference() -> None:
    # Paired Bernoulli systems: A right with p=0.7, B right with p=0.6, true diff 0.1.
    rng = np.random.default_rng(123)
    covered, trials = 0, 60
    for t in range(trials):
        u = rng.random(300)
        a = u < 0.7
        b = u < 0.6  # correlated pairs, as real systems on the same examples are
        ci = paired_bootstrap_ci(a.tolist(), b.tolist(), n_resamples=1000, seed=t)
        covered += ci.low <= 0.1 <= ci.high
    assert covered / trials >= 0.85  # nominal 95%; loose bound keeps the test stable


@pytest.mark.parametrize(("k", "n"), [(0, 1), (3, 10), (40, 100), (5, 60), (500, 1000)])
def test_log10_p_matches_the_float_p_where_it_is_representable(k: int, n: int) -> None:
    assert binomial_two_sided_half_log10(k, n) == pytest.approx(math.log10(binomial_two_sided_half(k, n)), abs=1e-9)


def test_log10_p_stays_finite_where_the_float_p_underflows() -> None:
    # banking77: the adapter alone right on ~2,300 pairs, ranking alone right on a handful
    assert binomial_two_sided_half(2, 2302) == 0.0
    lg = binomial_two_sided_half_log10(2, 2302)
    # 2 * (1 + 2302 + C(2302, 2)) / 2**2302 = 2 * 2650754 / 2**2302
    assert 1 + 2302 + math.comb(2302, 2) == 2650754
    assert lg == pytest.approx(math.log10(2 * 2650754) - 2302 * math.log10(2), abs=1e-9)
    assert -690 < lg < -686
    adapter = [1.0] * 2300 + [0.0] * 2 + [1.0] * 10
    baseline = [0.0] * 2300 + [1.0] * 2 + [1.0] * 10
    assert mcnemar_exact(adapter, baseline) == 0.0
    assert paired_test_log10_p(adapter, baseline) == pytest.approx(lg)
    assert binomial_two_sided_half_log10(0, 0) == 0.0
