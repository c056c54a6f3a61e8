"""Locality-sensitive hashing over MinHash signatures: band parameters, band keys and a vectorised band join.

Two texts become a candidate pair when all ``rows`` positions of at least one of ``bands`` bands agree; with
Jaccard similarity ``s`` that happens with probability ``1 - (1 - s^rows)^bands``. :func:`optimal_params`
picks ``(bands, rows)`` for a threshold by minimising the weighted areas of false positives (below the
threshold) and false negatives (above it), as datasketch does, with the integrals done on a fixed grid in
numpy so it needs no scipy and takes milliseconds.

Instead of inserting texts one by one into an index, :func:`candidate_pairs` sorts each band's keys once and
reads the pairs off the runs of equal keys: a batch join that is a few numpy sorts for a million texts. A
bucket with very many texts (thousands of copies of one template) gives a quadratic number of pairs, so each
text is paired with at most ``window`` following texts of its bucket. This all-pairs join serves checks that
need every pair; clusters come from the linear join of :mod:`curation.similarity.near_dup_join`, which reads the same
buckets (:func:`band_key`) one band at a time.
"""

from __future__ import annotations

import functools

import numpy as np

from curation.similarity.shingles import fmix64, splitmix64

_GRID = 2001  # points of the integration grid on [0, 1]


@functools.cache
def optimal_params(
    threshold: float, num_perm: int, false_positive_weight: float = 0.5, false_negative_weight: float = 0.5
) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimising the weighted error areas."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    s = np.linspace(0.0, 1.0, _GRID)
    below = s <= threshold
    best, best_error = (1, 1), float("inf")
    for bands in range(1, num_perm + 1):
        rows = np.arange(1, num_perm // bands + 1, dtype=np.float64)[:, None]
        collide = 1.0 - (1.0 - s[None, :] ** rows) ** bands  # (rows, grid)
        fp = np.trapezoid(np.where(below, collide, 0.0), s, axis=1)
        fn = np.trapezoid(np.where(below, 0.0, 1.0 - collide), s, axis=1)
        error = false_positive_weight * fp + false_negative_weight * fn
        i = int(np.argmin(error))
        if error[i] < best_error - 1e-15:
            best, best_error = (bands, i + 1), float(error[i])
    return best


def collision_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that two texts with this Jaccard similarity become a candidate pair."""
    return float(1.0 - (1.0 - similarity**rows) ** bands)


def _row_multipliers(rows: int) -> np.ndarray:
    return np.array([m | 1 for m in splitmix64(0xBA4D_0001, rows)], dtype=np.uint64)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """A 64-bit key per text and band, ``(n, bands)``: equal keys mean (up to 2^-64) an equal band."""
    n, num_perm = signatures.shape
    if bands * rows > num_perm:
        raise ValueError(f"{bands} bands x {rows} rows needs {bands * rows} permutations, have {num_perm}")
    multipliers = _row_multipliers(rows)
    keys = np.zeros((n, bands), dtype=np.uint64)
    for r in range(rows):
        column = signatures[:, r : bands * rows : rows][:, :bands].astype(np.uint64)
        keys += column * multipliers[r]
    return fmix64(keys)


def band_key(signatures: np.ndarray, band: int, rows: int, index: np.ndarray | None = None) -> np.ndarray:
    """Column ``band`` of :func:`band_keys` alone, for the rows ``index`` (all when None).

    One band at a time keeps 8 bytes per text instead of 8 per text and band, and reading only the band's
    columns avoids copying the signatures (512 MB at 1M texts) once per band.
    """
    if (band + 1) * rows > signatures.shape[1]:
        raise ValueError(f"band {band} of {rows} rows needs {(band + 1) * rows} permutations")
    multipliers = _row_multipliers(rows)
    key = np.zeros(signatures.shape[0] if index is None else len(index), dtype=np.uint64)
    for r in range(rows):
        column = signatures[:, band * rows + r] if index is None else signatures[index, band * rows + r]
        key += column.astype(np.uint64) * multipliers[r]
    return fmix64(key)


def _bucket_pairs(keys: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of positions sharing a key, each position paired with up to ``window`` later ones in its bucket."""
    n = len(keys)
    if n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new_run[1:])
    run_starts = np.flatnonzero(new_run)
    run_lengths = np.diff(np.append(run_starts, n))
    shared = run_lengths >= 2
    if not shared.any():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    run_starts, run_lengths = run_starts[shared], run_lengths[shared]
    members = np.repeat(run_starts, run_lengths) + (
        np.arange(int(run_lengths.sum())) - np.repeat(np.cumsum(run_lengths) - run_lengths, run_lengths)
    )
    remaining = np.repeat(run_starts + run_lengths, run_lengths) - members - 1
    partners = np.minimum(remaining, window)
    left = np.repeat(members, partners)
    step = np.arange(int(partners.sum())) - np.repeat(np.cumsum(partners) - partners, partners) + 1
    right = left + step
    return order[left], order[right]


def candidate_pairs(
    signatures: np.ndarray, bands: int, rows: int, active: np.ndarray | None = None, window: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Unique candidate pairs ``(left, right)`` of row indices, ``left < right``, sorted.

    ``active`` masks the rows that take part (texts without shingles must not: their signatures are equal).
    """
    n = signatures.shape[0]
    index = np.arange(n, dtype=np.int64) if active is None else np.flatnonzero(active).astype(np.int64)
    if len(index) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    keys = band_keys(signatures[index], bands, rows)
    codes = []
    for band in range(bands):
        a, b = _bucket_pairs(keys[:, band], window)
        codes.append(index[np.minimum(a, b)] * n + index[np.maximum(a, b)])
    merged = sorted_unique(np.concatenate(codes))
    return merged // n, merged % n


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (numpy 2.x's hash-based unique is several times slower on int64 here)."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]
