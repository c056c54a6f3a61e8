"""The linear clusters join: its pieces on hand-made input, and its clusters against the all-pairs join."""

from __future__ import annotations

import random

import numpy as np
import pytest

from curation.similarity.exact import KeepRank
from curation.similarity.jaccard import ShingleRuns, ShingleSets, sorted_segments
from curation.similarity.minhash import MinHasher, estimate_pairs
from curation.similarity.near_dup import NearDupConfig, find_near_duplicates
from curation.similarity.near_dup_join import (
    BandRuns,
    anchor_links,
    band_runs,
    cross_cost,
    cross_links,
    neighbour_links,
)
from curation.similarity.shingles import exact_jaccard, shingle_batch
from curation.similarity.union_find import ArrayUnionFind
from tests.support.texts import BANKING_WORDS, mutate, random_text

#: This file's vocabulary: the first 17 of the banking words (the texts its tests were written with).
WORDS = BANKING_WORDS[:17]


def ranks_for(ids: list[str]) -> dict[str, KeepRank]:
    return {rid: KeepRank(1, 0.0, ("2026-01-01T00:00:00.000000", i, 0), rid) for i, rid in enumerate(ids)}


def components(n: int, left: list[int], right: list[int]) -> list[int]:
    """Smallest member of each element's component, by a plain Python union-find."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in zip(left, right, strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


def test_array_union_find_gives_the_components_with_their_smallest_member_as_root() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        n = int(rng.integers(2, 300))
        left, right = rng.integers(0, n, size=(2, int(rng.integers(0, 2 * n))))
        finder = ArrayUnionFind(n)
        half = len(left) // 2  # in two batches, as the join does
        finder.union(left[:half], right[:half])
        finder.union(left[half:], right[half:])
        assert finder.parent.tolist() == components(n, left.tolist(), right.tolist())


def test_anchor_and_neighbour_links_of_hand_made_buckets() -> None:
    runs = BandRuns(np.array([10, 11, 12, 13, 14, 20, 21]), np.array([0, 5, 7]))
    assert [list(x) for x in anchor_links(runs)] == [[10, 10, 10, 10, 20], [11, 12, 13, 14, 21]]
    left, right = neighbour_links(runs, 2)
    pairs = sorted(zip(left.tolist(), right.tolist(), strict=True))
    # the anchor's first neighbour is already its anchor link; a bucket of two has only the anchor link
    assert pairs == [(10, 12), (11, 12), (11, 13), (12, 13), (12, 14), (13, 14)]


def test_band_runs_hold_each_shared_bucket_once_in_a_per_band_order() -> None:
    sigs = np.random.default_rng(3).integers(0, 3, size=(200, 8), dtype=np.uint32)
    orders = []
    for band in (0, 1):
        runs = band_runs(sigs, np.arange(200), band, 2)
        assert (runs.lengths >= 2).all() and len(set(runs.members.tolist())) == len(runs.members)
        columns = sigs[:, 2 * band : 2 * band + 2]
        for k in range(len(runs.lengths)):
            bucket = runs.members[runs.starts[k] : runs.starts[k + 1]]
            assert (columns[bucket] == columns[bucket[0]]).all()
        orders.append(runs.members.tolist())
    assert orders[0] != orders[1]


def test_cross_links_give_every_pair_across_clusters_once() -> None:
    rng = np.random.default_rng(5)
    members = rng.permutation(60)
    runs = BandRuns(members, np.array([0, 25, 27, 60]))
    roots = rng.integers(0, 4, size=60)  # cluster of each member, as union-find roots
    chosen = np.array([True, True, True])
    got = sorted(
        (min(a, b), max(a, b))
        for left, right in cross_links(runs, roots, chosen)
        for a, b in zip(left.tolist(), right.tolist(), strict=True)
    )
    root_of = dict(zip(members.tolist(), roots.tolist(), strict=True))
    expected = sorted(
        (min(a, b), max(a, b))
        for k in range(3)
        for i, a in enumerate(members[runs.starts[k] : runs.starts[k + 1]].tolist())
        for b in members[runs.starts[k] : runs.starts[k + 1]].tolist()[i + 1 :]
        if root_of[a] != root_of[b]
    )
    assert got == expected
    assert cross_cost(runs, roots).sum() == len(expected)


def _families(seed: int, sizes: list[int], edits: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for size in sizes:
        base = random_text(rng, 40, WORDS)
        texts += [mutate(rng, base, rng.randint(0, edits), WORDS) for _ in range(size)]
    texts += [random_text(rng, 40, WORDS) for _ in range(30)]
    rng.shuffle(texts)
    return texts


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_clusters_join_equals_the_all_pairs_join_when_every_bucket_is_completed(threshold: float) -> None:
    texts = _families(int(threshold * 10), [2, 3, 40, 120], 3)
    ids = [f"rec_{i:04d}" for i in range(len(texts))]
    config = NearDupConfig(threshold=threshold)
    pairs = find_near_duplicates(ids, texts, ranks_for(ids), config, mode="pairs")
    clusters = find_near_duplicates(ids, texts, ranks_for(ids), config, mode="clusters")
    assert clusters.stats["exact"] == 1
    assert clusters.clusters == pairs.clusters and clusters.clusters
    assert len(clusters.pairs) < len(pairs.pairs)  # pairs inside a cluster were answered by union-find
    assert clusters.stats["jaccard_computed"] < pairs.stats["candidate_pairs"] - pairs.stats["prefiltered_pairs"]


def test_clusters_join_without_completion_joins_a_big_family_and_its_similarities_are_exact() -> None:
    texts = _families(8, [400, 30, 5], 2)
    ids = [f"rec_{i:04d}" for i in range(len(texts))]
    config = NearDupConfig(threshold=0.7, completion_limit=0)
    pairs = find_near_duplicates(ids, texts, ranks_for(ids), config, mode="pairs")
    clusters = find_near_duplicates(ids, texts, ranks_for(ids), config, mode="clusters")
    assert clusters.stats["exact"] == 0
    assert [(c.kept, c.members) for c in clusters.clusters] == [(c.kept, c.members) for c in pairs.clusters]
    sets = shingle_batch(texts).sets()
    for cluster in clusters.clusters:
        kept = sets[int(cluster.kept[4:])]
        for member, similarity in zip(cluster.members, cluster.similarities, strict=True):
            assert similarity == exact_jaccard(sets[int(member[4:])], kept)  # to the kept member, exactly
    for a, b, similarity in clusters.pairs:
        assert similarity >= 0.7 and similarity == exact_jaccard(sets[int(a[4:])], sets[int(b[4:])])


def test_clusters_do_not_depend_on_input_order() -> None:
    texts = _families(2, [3, 25, 60], 3)
    ids = [f"rec_{i:04d}" for i in range(len(texts))]
    config = NearDupConfig(threshold=0.7, completion_limit=0)
    reference = find_near_duplicates(ids, texts, ranks_for(ids), config, mode="clusters").clusters
    order = random.Random(1).sample(range(len(ids)), len(ids))
    shuffled = [ids[i] for i in order], [texts[i] for i in order]
    again = find_near_duplicates(*shuffled, ranks_for(ids), config, mode="clusters").clusters
    assert again == reference


def test_shingle_sets_collected_while_sketching_equal_sets_shingled_afresh() -> None:
    rng = random.Random(6)
    texts = [mutate(rng, random_text(rng, rng.randint(1, 80), WORDS), 3, WORDS) for _ in range(300)] + ["", "?!"]
    collected = ShingleRuns()
    MinHasher().sketch(texts, batch_chars=2000, on_batch=lambda lo, hi, b: collected.add(np.arange(lo, hi), b))
    wanted = np.arange(0, len(texts), 2)
    left, right = rng.choices(wanted.tolist(), k=500), rng.choices(wanted.tolist(), k=500)
    fresh = ShingleSets(texts, wanted, 5).jaccard(np.array(left), np.array(right))
    reused = ShingleSets(texts, wanted, 5, collected=collected).jaccard(np.array(left), np.array(right))
    assert reused.tolist() == fresh.tolist()
    partial = ShingleRuns()  # only some texts collected: the others are shingled
    MinHasher().sketch(texts[:50], on_batch=lambda lo, hi, b: partial.add(np.arange(lo, hi), b))
    mixed = ShingleSets(texts, wanted, 5, collected=partial).jaccard(np.array(left), np.array(right))
    assert mixed.tolist() == fresh.tolist()


def test_sorted_segments_and_long_rows() -> None:
    rng = np.random.default_rng(7)
    lengths = rng.integers(0, 40, size=200)
    lengths[5] = 300_000  # one row longer than a sorting step
    values = rng.integers(0, 2**64, size=int(lengths.sum()), dtype=np.uint64)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    out = sorted_segments(values, offsets)
    for i in range(len(lengths)):
        assert out[offsets[i] : offsets[i + 1]].tolist() == sorted(values[offsets[i] : offsets[i + 1]].tolist())


def test_estimates_are_the_share_of_equal_positions() -> None:
    sigs = np.random.default_rng(8).integers(0, 3, size=(50, 128), dtype=np.uint32)
    left, right = np.arange(50), np.arange(50)[::-1].copy()
    assert estimate_pairs(sigs, left, right, chunk=7).tolist() == (sigs[left] == sigs[right]).mean(axis=1).tolist()
