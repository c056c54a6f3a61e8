"""Paired statistics for comparing two systems scored on the same examples.

- :func:`paired_bootstrap_ci`: percentile bootstrap CI of mean(a) - mean(b), resampling examples (pairs).
- :func:`mcnemar_exact`: McNemar's exact test for paired accuracy: a two-sided binomial test on the
  discordant pairs. :func:`sign_test` is the same test for graded scores (pairs that differ, by sign).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import comb, log10

import numpy as np

# Bootstrap resamples are drawn in chunks so memory stays below ~64 MB of indices at any eval-set size.
_CHUNK_CELLS = 8_000_000


@dataclass(frozen=True)
class BootstrapCI:
    diff: float  # observed mean(a) - mean(b)
    low: float
    high: float
    confidence: float
    n_resamples: int


def _as_paired_arrays(a: Sequence[bool | float], b: Sequence[bool | float]) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise ValueError(f"paired vectors differ in length: {len(a)} vs {len(b)}")
    if len(a) == 0:
        raise ValueError("paired statistics need at least one example")
    return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)


def paired_bootstrap_ci(
    a: Sequence[bool | float],
    b: Sequence[bool | float],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap CI of mean(a) - mean(b), resampling example indices with replacement.

    Both systems are resampled with the same indices, so the CI reflects the paired design (much narrower
    than two independent CIs when the systems agree on most examples). Seeded: the same inputs give the
    same interval.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    x, y = _as_paired_arrays(a, b)
    diffs = x - y
    n = diffs.size
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    rows_per_chunk = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_resamples, rows_per_chunk):
        stop = min(n_resamples, start + rows_per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diffs[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return BootstrapCI(
        diff=float(diffs.mean()),
        low=float(low),
        high=float(high),
        confidence=confidence,
        n_resamples=n_resamples,
    )


def binomial_two_sided_half(successes: int, trials: int) -> float:
    """Exact two-sided p of ``successes`` in ``trials`` under p = 1/2: 2 * P(X <= min(k, n-k)), capped at 1.

    Computed with exact integers, so it stays accurate in the far tail (p = 1e-40 is not rounded to 0).
    """
    if trials == 0:
        return 1.0
    k = min(successes, trials - successes)
    tail = sum(comb(trials, i) for i in range(k + 1))
    p = Fraction(2 * tail, 2**trials)
    return float(min(p, Fraction(1)))


def binomial_two_sided_half_log10(successes: int, trials: int) -> float:
    """log10 of :func:`binomial_two_sided_half`, exact in the far tail where the float p underflows to 0.

    With 2,300 discordant pairs the p-value is about 1e-690, below the smallest double; its log stays finite.
    """
    if trials == 0:
        return 0.0
    k = min(successes, trials - successes)
    tail = sum(comb(trials, i) for i in range(k + 1))
    return min(0.0, log10(2 * tail) - trials * log10(2))


def _discordant(a: Sequence[bool | float], b: Sequence[bool | float]) -> tuple[int, int]:
    x, y = _as_paired_arrays(a, b)
    return int((x > y).sum()), int((x < y).sum())


def paired_test_log10_p(a: Sequence[bool | float], b: Sequence[bool | float]) -> float:
    """log10 of the exact paired p-value (McNemar for 0/1 scores, the sign test otherwise: the same binomial)."""
    wins, losses = _discordant(a, b)
    return binomial_two_sided_half_log10(wins, wins + losses)


def mcnemar_exact(a_correct: Sequence[bool | float], b_correct: Sequence[bool | float]) -> float:
    """Two-sided exact McNemar p-value: binomial test on the pairs where exactly one system is right."""
    x, y = _as_paired_arrays(a_correct, b_correct)
    if not (np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("McNemar's test needs binary (right/wrong) scores; use sign_test for graded ones")
    only_a, only_b = _discordant(a_correct, b_correct)
    return binomial_two_sided_half(only_a, only_a + only_b)


def sign_test(a: Sequence[bool | float], b: Sequence[bool | float]) -> float:
    """Two-sided exact sign test on paired scores (ties dropped); equals McNemar's for 0/1 scores."""
    wins, losses = _discordant(a, b)
    return binomial_two_sided_half(wins, wins + losses)


def is_binary(scores: Sequence[bool | float]) -> bool:
    return bool(np.isin(np.asarray(scores, dtype=np.float64), (0.0, 1.0)).all())
