"""Exact k-nearest neighbours by cosine similarity in bounded memory.

Vectors are L2-normalised, so cosine similarity is the inner product. The search multiplies a block of
``query_block`` queries by a block of ``base_block`` base rows at a time, takes each row's top k of the block
with one partition and merges those k into the row's running top k, so memory is the block's similarities (float32)
and their partition order (int64), ``query_block x base_block x 12`` bytes whatever the number of rows (the
defaults: 1024 x 8192, 96 MB), plus the inputs and the (n x k) result. Time is the full n x m x d product: it is an
exact search, not an approximate index (at 200k x 384 see benchmark B4 for the measured time).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from schemas.progress import progress


@dataclass(frozen=True)
class Neighbours:
    """``indices[i]`` are the rows of the base most similar to query ``i``, best first; ``similarities`` their
    cosines. Where fewer than k neighbours exist (k > n - 1), the tail holds index -1 and similarity -inf."""

    indices: np.ndarray  # (n, k) int64
    similarities: np.ndarray  # (n, k) float32

    def count(self) -> np.ndarray:
        """Real neighbours per query (k, or fewer where the base is too small)."""
        return (self.indices >= 0).sum(axis=1)


def knn(
    queries: np.ndarray,
    base: np.ndarray | None = None,
    k: int = 10,
    query_block: int = 1024,
    base_block: int = 8192,
    show_progress: bool = True,
) -> Neighbours:
    """The ``k`` most similar rows of ``base`` for every row of ``queries`` (exact, by inner product).

    With ``base=None`` the queries are searched against themselves and a row is never its own neighbour (so at
    most n - 1 neighbours exist; missing ones are -1 / -inf). Rows come best first (equal similarities: the
    smaller base index first); which of several rows tied at the k-th place is kept is unspecified.
    Raises ValueError for k < 1 or mismatched widths.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    self_search = base is None
    base_arr = queries if base is None else np.ascontiguousarray(base, dtype=np.float32)
    if queries.ndim != 2 or base_arr.ndim != 2 or queries.shape[1] != base_arr.shape[1]:
        raise ValueError(f"queries {queries.shape} and base {base_arr.shape} must be 2-D with the same width")
    n, m = len(queries), len(base_arr)
    best_sim = np.full((n, k), -np.inf, dtype=np.float32)
    best_idx = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or m == 0:
        return Neighbours(best_idx, best_sim)
    blocks = -(-n // query_block) * -(-m // base_block)
    with progress("knn", total=blocks) if show_progress else contextlib.nullcontext(_NullBar()) as bar:
        for q0 in range(0, n, query_block):
            q1 = min(n, q0 + query_block)
            run_sim, run_idx = best_sim[q0:q1], best_idx[q0:q1]
            for b0 in range(0, m, base_block):
                b1 = min(m, b0 + base_block)
                sims = queries[q0:q1] @ base_arr[b0:b1].T
                if self_search and b0 < q1 and q0 < b1:  # the diagonal: a row is not its own neighbour
                    rows = np.arange(max(q0, b0), min(q1, b1))
                    sims[rows - q0, rows - b0] = -np.inf
                # the block's own top k first (one partition of the product, no index matrix), then a merge of
                # 2k candidates per row with the running best
                if sims.shape[1] > k:
                    top = np.argpartition(sims, sims.shape[1] - k, axis=1)[:, -k:]
                    block_sim = np.take_along_axis(sims, top, axis=1)
                else:
                    top = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
                    block_sim = sims
                cand_sim = np.concatenate([run_sim, block_sim], axis=1)
                cand_idx = np.concatenate([run_idx, top + b0], axis=1)
                keep = np.argpartition(cand_sim, cand_sim.shape[1] - k, axis=1)[:, -k:]
                run_sim = np.take_along_axis(cand_sim, keep, axis=1)
                run_idx = np.take_along_axis(cand_idx, keep, axis=1)
                bar.advance()
            order = np.lexsort((np.where(run_idx < 0, np.iinfo(np.int64).max, run_idx), -run_sim), axis=1)
            run_sim = np.take_along_axis(run_sim, order, axis=1)
            run_idx = np.take_along_axis(run_idx, order, axis=1)
            run_idx[~np.isfinite(run_sim)] = -1
            best_sim[q0:q1], best_idx[q0:q1] = run_sim, run_idx
    return Neighbours(best_idx, best_sim)


class _NullBar:
    def advance(self, n: float = 1) -> None:
        return None
