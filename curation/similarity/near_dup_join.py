"""Near-duplicate clusters in time linear in the LSH bucket sizes: sparse candidates, verified until joined.

Emitting every pair of an LSH bucket is quadratic in its size, and real corpora have big buckets: templated
prompts, one tool description in thousands of rows, pages scraped many times with small edits. On 50,000
records of such families (``benchmarks/bench_b2_families.py``) the all-pairs join emitted 28M candidate pairs
and computed 9.4M exact Jaccards, most between records that other pairs had already put in one cluster.

A cluster stays what it was: a connected component of the pairs of records that share an LSH band and whose
exact Jaccard reaches the threshold. What changes is which pairs are looked at (:func:`join_clusters`):

1. **Anchor links**, every band: each member of a bucket with the bucket's anchor, its first member in an order
   drawn anew per band. A family close to its anchor joins with one verification per member (at 1M records:
   3.0M Jaccards put 0.8M records in clusters).
2. **Neighbour links**, every band: each member with its next ``partners`` members in that order, so a big
   family whose members are near the threshold gets 23 independent chances to connect, whatever its anchors.
3. **Completion**: in each bucket, the pairs whose records are still in different clusters. When completing
   every bucket takes at most ``completion_limit`` pairs (true of corpora of some 20,000 records, such as the
   B3 truth set), every bucket is completed and the clusters equal the all-pairs join's. Otherwise only the
   buckets where those pairs are at most ``bucket_completion`` per member (a family and a few stragglers; any
   bucket of up to ``2 * bucket_completion + 1`` texts) are; the mixed buckets (one template shared by many
   unrelated texts) keep their sampled links, and that is the only place a link can be lost.

Every candidate goes through :class:`JoinState`: a pair whose records are already in one cluster cannot change
the clusters and is not verified (the union-find answers it; at 1M records, 39M of 84M links), the others are
screened by their MinHash estimate and verified best estimate first, a few per pair of clusters per round, and
the pairs that pass are joined before the next round. Steps 2 and 3 without full completion verify at most
``pair_cap`` pairs per pair of clusters and screen at ``sampled_floor``, tighter than the exact steps' floor:
most of their candidates are pairs just below the threshold between clusters that never join.

Skipping joined pairs loses nothing; it changes which pairs are verified, so a record's most similar verified
neighbour is the most similar among the pairs verified. The kept member's similarities are computed afterwards.
Sampling (steps 2 and 3 without completion) is what costs recall: measured on 200 random families of the
heavy-family corpus, against every pair's exact Jaccard, see docs/DEDUP.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from curation.similarity.jaccard import ragged_arange
from curation.similarity.lsh import band_key, sorted_unique
from curation.similarity.minhash import estimate_pairs
from curation.similarity.shingles import fmix64
from curation.similarity.union_find import ArrayUnionFind

_SALT = np.uint64(0x5EED_0F_BA4D)
_GOLDEN = np.uint64(0x9E37_79B9_7F4A_7C15)
_CHUNK_PAIRS = 1 << 22  # candidate pairs offered at once: bounds the temporary arrays


@dataclass(frozen=True)
class BandRuns:
    """The shared buckets of one band: ``members[starts[k]:starts[k + 1]]`` is bucket ``k`` in its band order."""

    members: np.ndarray  # int32 row indices
    starts: np.ndarray  # int64, one more than the buckets

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)


def band_runs(signatures: np.ndarray, index: np.ndarray, band: int, rows: int) -> BandRuns:
    """Buckets of two or more of the rows ``index`` in ``band``; members in an order drawn anew per band."""
    if len(signatures) >= 2**31:
        raise ValueError("more than 2^31 texts: row indices are kept as int32")
    return band_runs_from_keys(band_key(signatures, band, rows, index), index, band)


def band_runs_from_keys(keys: np.ndarray, index: np.ndarray, band: int, drawn: np.ndarray | None = None) -> BandRuns:
    """:func:`band_runs` from the keys of the rows ``index`` (ascending) in ``band``.

    Rows whose key no other row has may be left out (the band shuffle sends only the others): the buckets and their
    order do not change. ``drawn`` (aligned with ``index``, default ``index``) is what the order within a bucket is
    drawn from: a caller that numbers a subset of the texts ``0..m-1`` passes their row numbers among all the texts
    and gets the buckets, and the clusters, that numbering all of them would give.
    """
    drawn = index if drawn is None else drawn
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    new_run = np.ones(len(order), dtype=bool)
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new_run[1:])
    run_id = np.cumsum(new_run) - 1
    shared = np.bincount(run_id)[run_id] >= 2 if len(run_id) else new_run
    members, run_id = index[order[shared]].astype(np.int32), run_id[shared]  # half the memory of int64
    if not len(members):
        return BandRuns(members, np.zeros(1, dtype=np.int64))
    first = np.ones(len(members), dtype=bool)
    first[1:] = run_id[1:] != run_id[:-1]
    dense = (np.cumsum(first) - 1).astype(np.uint64)
    source = np.asarray(drawn)[order[shared]].astype(np.uint64)
    draw = fmix64(source * _GOLDEN + _SALT + np.uint64(band)) >> np.uint64(32)
    members = members[np.argsort((dense << np.uint64(32)) | draw)]
    return BandRuns(members, np.append(np.flatnonzero(first), len(members)).astype(np.int64))


def anchor_links(runs: BandRuns) -> tuple[np.ndarray, np.ndarray]:
    """Each member of a bucket with the bucket's first member."""
    lengths = runs.lengths
    start_of = np.repeat(runs.starts[:-1], lengths)
    later = np.arange(len(runs.members)) > start_of
    return runs.members[start_of[later]], runs.members[later]


def neighbour_links(runs: BandRuns, partners: int) -> tuple[np.ndarray, np.ndarray]:
    """Each member with the next ``partners`` members of its bucket (the anchor's first one is an anchor link)."""
    lengths = runs.lengths
    position = np.arange(len(runs.members)) - np.repeat(runs.starts[:-1], lengths)
    count = np.minimum(np.repeat(lengths, lengths) - position - 1, partners)
    skip = (position == 0).astype(np.int64)
    count = np.maximum(count - skip, 0)
    left = np.repeat(np.arange(len(runs.members)), count)
    right = ragged_arange(np.arange(len(runs.members)) + 1 + skip, count)
    return runs.members[left], runs.members[right]


def _root_groups(runs: BandRuns, roots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Members sorted by (bucket, root): the order, each one's bucket, and the start and size of each group."""
    bucket = np.repeat(np.arange(len(runs.lengths)), runs.lengths)
    order = np.lexsort((roots, bucket))
    bucket, roots = bucket[order], roots[order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = (bucket[1:] != bucket[:-1]) | (roots[1:] != roots[:-1])
    group_start = np.flatnonzero(new_group)
    return order, bucket, group_start, np.diff(np.append(group_start, len(order)))


def cross_cost(runs: BandRuns, roots: np.ndarray) -> np.ndarray:
    """Per bucket, how many of its pairs have their records in different clusters."""
    lengths = runs.lengths
    if not len(lengths):
        return lengths
    _, bucket, group_start, group_size = _root_groups(runs, roots)
    same = np.bincount(bucket[group_start], weights=group_size.astype(np.float64) ** 2, minlength=len(lengths))
    return (lengths**2 - np.rint(same).astype(np.int64)) // 2


def cross_links(runs: BandRuns, roots: np.ndarray, chosen: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every pair of records in different clusters in the ``chosen`` buckets, in chunks of whole members."""
    order, bucket, group_start, group_size = _root_groups(runs, roots)
    group_end = np.repeat(group_start + group_size, group_size)
    bucket_end = runs.starts[1:][bucket]  # sorting kept each bucket at its place, so its end is unchanged
    count = np.where(chosen[bucket], bucket_end - group_end, 0)
    ends = np.cumsum(count)
    lo = 0
    while lo < len(count):
        hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + _CHUNK_PAIRS, side="right")))
        part = count[lo:hi]
        left = np.repeat(np.arange(lo, hi), part)
        right = ragged_arange(group_end[lo:hi], part)
        yield runs.members[order[left]], runs.members[order[right]]
        lo = hi


@dataclass
class JoinState:
    """Union-find plus the verified pairs and the counts each stage removed."""

    finder: ArrayUnionFind
    signatures: np.ndarray
    floor: float  # candidates whose MinHash estimate is below this are not verified
    threshold: float
    jaccard: Callable[[np.ndarray, np.ndarray], np.ndarray]
    good: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("candidates", "joined", "prefiltered", "verified", "good"), 0)
    )

    def offer(self, left: np.ndarray, right: np.ndarray, cap: int | None = None, floor: float | None = None) -> None:
        """Verify the candidate pairs that could still join two clusters, and join those that pass.

        ``cap`` bounds the pairs verified per pair of clusters (the best estimates; None: until joined);
        ``floor`` replaces the state's prefilter floor.
        """
        self.verify(*self.screen(left, right, floor), cap)

    def screen(
        self, left: np.ndarray, right: np.ndarray, floor: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distinct candidates not yet in one cluster whose MinHash estimate passes the floor, with it."""
        self.counts["candidates"] += len(left)
        left, right = self.apart(left, right)
        n = len(self.finder.parent)
        code = sorted_unique(_codes(left, right, n))
        del left, right
        estimate = estimate_pairs(self.signatures, code // n, code % n)
        keep = estimate >= (self.floor if floor is None else floor)
        self.counts["prefiltered"] += int(len(keep) - keep.sum())
        code = code[keep]
        return code // n, code % n, estimate[keep]

    def verify(self, left: np.ndarray, right: np.ndarray, estimate: np.ndarray, cap: int | None = None) -> None:
        """Verify screened candidates, best estimate first, a few per pair of clusters per round."""
        by_estimate = np.argsort(-estimate, kind="stable")
        left, right = left[by_estimate], right[by_estimate]
        for batch_left, batch_right in self._rounds(left, right, cap):
            similarity = self.jaccard(batch_left, batch_right)
            self.counts["verified"] += len(similarity)
            passed = similarity >= self.threshold
            if passed.any():
                self.good.append((batch_left[passed], batch_right[passed], similarity[passed]))
                self.counts["good"] += int(passed.sum())
                self.finder.union(batch_left[passed], batch_right[passed])

    def apart(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        apart = self.finder.roots(left) != self.finder.roots(right)
        self.counts["joined"] += int(len(apart) - apart.sum())
        return left[apart], right[apart]

    def _rounds(self, left: np.ndarray, right: np.ndarray, cap: int | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches to verify: per pair of clusters, its best 1, then 2, 4, ... remaining candidates."""
        allowance = 1
        n = len(self.finder.parent)
        while len(left) and (cap is None or allowance < cap):
            if allowance > 1:
                left, right = self.apart(left, right)
            group = _codes(self.finder.roots(left), self.finder.roots(right), n)
            order = np.argsort(group, kind="stable")  # stable: best estimate first within a group
            now = _first_per_group(group, order, allowance)
            yield left[now], right[now]
            left, right = left[~now], right[~now]
            allowance *= 2

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The verified pairs at or above the threshold: (left, right, similarity), left < right."""
        if not self.good:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.float64)
        left, right, similarity = (np.concatenate(parts) for parts in zip(*self.good, strict=True))
        return np.minimum(left, right), np.maximum(left, right), similarity


@dataclass(frozen=True)
class JoinPlan:
    """How hard :func:`join_clusters` looks (the ``NearDupConfig`` fields of the same names)."""

    partners: int
    bucket_completion: int
    completion_limit: int
    sampled_floor: float  # prefilter floor of the sampled steps (neighbour links, cheap buckets)
    pair_cap: int = 15


def _codes(left: np.ndarray, right: np.ndarray, n: int) -> np.ndarray:
    """One int64 per unordered pair of rows."""
    return np.minimum(left, right).astype(np.int64) * n + np.maximum(left, right)


def _best_per_cluster_pair(
    finder: ArrayUnionFind, left: np.ndarray, right: np.ndarray, estimate: np.ndarray, count: int
) -> np.ndarray:
    """Mask of the ``count`` best estimates among the candidates of each pair of clusters."""
    n = len(finder.parent)
    group = _codes(finder.roots(left), finder.roots(right), n)
    return _first_per_group(group, np.lexsort((-estimate, group)), count)


def _first_per_group(group: np.ndarray, order: np.ndarray, count: int) -> np.ndarray:
    """Mask of the first ``count`` rows of each group, rows taken in ``order`` (which sorts them by group)."""
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order[1:]] != group[order[:-1]]
    position = np.arange(len(order))
    rank = position - np.maximum.accumulate(np.where(first, position, 0))
    keep = np.zeros(len(order), dtype=bool)
    keep[order[rank < count]] = True
    return keep


def _offer_merged(state: JoinState, links: Iterator[tuple[np.ndarray, np.ndarray]], plan: JoinPlan) -> None:
    """Offer the links of all bands at once: a pair in several bands is one candidate, capped per cluster pair.

    Each band's links are screened first and only the ``pair_cap`` best of each pair of clusters are held for
    all bands: at 1M records the cheap buckets alone give 25M links, 18M of them above the prefilter.
    """
    n = len(state.finder.parent)
    codes, estimates = [], []
    for left, right in links:
        left, right, estimate = state.screen(left, right, plan.sampled_floor)
        keep = _best_per_cluster_pair(state.finder, left, right, estimate, plan.pair_cap)
        codes.append(_codes(left[keep], right[keep], n))
        estimates.append(estimate[keep].astype(np.float32))  # k / num_perm: exact in float32
    if not codes:
        return
    code, estimate = np.concatenate(codes), np.concatenate(estimates)
    del codes, estimates
    order = np.argsort(code, kind="stable")
    code, estimate = code[order], estimate[order]
    first = np.ones(len(code), dtype=bool)
    first[1:] = code[1:] != code[:-1]  # a pair from several bands: its estimate is the same in each
    left, right, estimate = code[first] // n, code[first] % n, estimate[first]
    keep = _best_per_cluster_pair(state.finder, left, right, estimate, plan.pair_cap)
    state.verify(left[keep], right[keep], estimate[keep], cap=plan.pair_cap)


def link_clusters(state: JoinState, runs: list[BandRuns], plan: JoinPlan) -> list[np.ndarray]:
    """Steps 1 and 2 of the module docstring; returns, per band, each bucket's pairs still across clusters."""
    for band in runs:
        state.offer(*anchor_links(band))
    _offer_merged(state, (neighbour_links(band, plan.partners) for band in runs), plan)
    return [cross_cost(band, state.finder.roots(band.members)) for band in runs]


def complete_clusters(
    state: JoinState, runs: list[BandRuns], plan: JoinPlan, costs: list[np.ndarray], exact: bool
) -> dict[str, int]:
    """Step 3: every bucket completed (``exact``), or the cheap ones; returns what it did."""
    total = int(sum(int(cost.sum()) for cost in costs))
    if exact:  # every bucket, every pair across clusters: the all-pairs join's result
        for band, cost in zip(runs, costs, strict=True):
            if cost.any():
                for left, right in cross_links(band, state.finder.roots(band.members), cost > 0):
                    state.offer(left, right)
        return {"completion_pairs": total, "exact": 1, "buckets_sampled": 0}
    cheap = [
        (cost > 0) & (cost <= plan.bucket_completion * band.lengths) for cost, band in zip(costs, runs, strict=True)
    ]
    links = (
        link
        for band, near in zip(runs, cheap, strict=True)
        if near.any()
        for link in cross_links(band, state.finder.roots(band.members), near)
    )
    _offer_merged(state, links, plan)
    sampled = sum(int(((cost > 0) & ~near).sum()) for cost, near in zip(costs, cheap, strict=True))
    return {"completion_pairs": total, "exact": 0, "buckets_sampled": sampled}


def join_clusters(state: JoinState, runs: list[BandRuns], plan: JoinPlan) -> dict[str, int]:
    """Steps 1-3 of the module docstring over the bands' buckets; returns what step 3 did. Every bucket is completed
    when that takes at most ``completion_limit`` pairs across clusters in all (a decision over the whole corpus)."""
    costs = link_clusters(state, runs, plan)
    total = int(sum(int(cost.sum()) for cost in costs))
    return complete_clusters(state, runs, plan, costs, exact=total <= plan.completion_limit)
