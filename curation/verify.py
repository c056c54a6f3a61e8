"""Exact Jaccard similarity of many pairs of texts at once, on their shingle sets, with numpy.

LSH candidates are only likely near-duplicates; every reported pair is verified here. The shingle hashes of
the texts involved are re-computed (a stored signature does not keep them), reduced to dense ranks, and kept as
one sorted array of ``(text << 32) | rank`` keys, deduplicated: each text's set is a contiguous run. The
intersection of a pair is then one vectorised ``searchsorted`` of the left text's keys, re-labelled with the
right text's index, into that array. No Python set is built, so memory stays at a few bytes per shingle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curation.lsh import sorted_unique
from curation.shingles import shingle_batch

_LOW32 = np.uint64(0xFFFFFFFF)
_PAIR_CHUNK = 1 << 21  # shingle look-ups per step: bounds the temporary arrays


class ShingleSets:
    """The exact shingle sets of ``texts[i]`` for each ``i`` in ``positions``."""

    def __init__(self, texts: Sequence[str], positions: np.ndarray, ngram: int, batch_chars: int = 1 << 22) -> None:
        self.positions = sorted_unique(np.asarray(positions, dtype=np.int64))
        hashes, local = [], []
        lo = 0
        while lo < len(self.positions):
            hi, size = lo, 0
            while hi < len(self.positions) and (hi == lo or size + len(texts[self.positions[hi]]) < batch_chars):
                size += len(texts[self.positions[hi]])
                hi += 1
            batch = shingle_batch([texts[i] for i in self.positions[lo:hi].tolist()], ngram)
            hashes.append(batch.hashes)
            local.append(np.repeat(np.arange(lo, hi, dtype=np.uint64), batch.counts))
            lo = hi
        all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
        distinct = sorted_unique(all_hashes)
        if len(distinct) > int(_LOW32):
            raise ValueError("more than 2^32 distinct shingles among the texts to verify")
        ranks = np.searchsorted(distinct, all_hashes).astype(np.uint64)
        owners = np.concatenate(local) if local else np.zeros(0, dtype=np.uint64)
        self.keys = sorted_unique((owners << np.uint64(32)) | ranks)
        self.sizes = np.bincount((self.keys >> np.uint64(32)).astype(np.int64), minlength=len(self.positions))
        self.starts = np.concatenate(([0], np.cumsum(self.sizes)[:-1])).astype(np.int64)

    def _local(self, positions: np.ndarray) -> np.ndarray:
        local = np.searchsorted(self.positions, positions)
        if len(local) and (local.max() >= len(self.positions) or (self.positions[local] != positions).any()):
            raise KeyError("a text of a pair was not given to ShingleSets")
        return local

    def jaccard(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """|A & B| / |A | B| for each pair ``(texts[left[k]], texts[right[k]])``; 0.0 if either set is empty."""
        a, b = self._local(np.asarray(left)), self._local(np.asarray(right))
        out = np.zeros(len(a), dtype=np.float64)
        sizes = self.sizes
        lo = 0
        while lo < len(a):
            cum = np.cumsum(sizes[a[lo:]])
            hi = lo + max(1, int(np.searchsorted(cum, _PAIR_CHUNK, side="right")))
            out[lo:hi] = self._chunk(a[lo:hi], b[lo:hi])
            lo = hi
        return out

    def _chunk(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        counts = self.sizes[a]
        total = int(counts.sum())
        first = np.cumsum(counts) - counts
        elements = np.repeat(self.starts[a], counts) + (np.arange(total) - np.repeat(first, counts))
        queries = (np.repeat(b, counts).astype(np.uint64) << np.uint64(32)) | (self.keys[elements] & _LOW32)
        found = np.searchsorted(self.keys, queries)
        hit = self.keys[np.minimum(found, len(self.keys) - 1)] == queries
        inter = np.bincount(np.repeat(np.arange(len(a)), counts), weights=hit, minlength=len(a))
        union = counts + self.sizes[b] - inter
        return np.divide(inter, union, out=np.zeros(len(a)), where=(counts > 0) & (self.sizes[b] > 0))


def verify_pairs(
    texts: Sequence[str], left: np.ndarray, right: np.ndarray, threshold: float, ngram: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, ShingleSets]:
    """The candidate pairs whose exact Jaccard is at least ``threshold``: (left, right, similarity, sets)."""
    sets = ShingleSets(texts, np.concatenate([left, right]), ngram)
    similarity = sets.jaccard(left, right)
    keep = similarity >= threshold
    return left[keep], right[keep], similarity[keep], sets
