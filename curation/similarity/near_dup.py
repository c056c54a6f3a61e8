"""Near-duplicate detection: MinHash LSH candidates, verified by exact Jaccard, clustered with union-find.

The pipeline over a list of texts: sketch (:mod:`curation.similarity.minhash`, or signatures stored earlier), LSH
buckets (:mod:`curation.similarity.lsh`), candidate pairs verified on the exact shingle sets
(:mod:`curation.similarity.jaccard`), so no reported pair is below the threshold, and union-find over the verified
pairs. Two joins produce the pairs:

* ``mode="clusters"`` (the ``near_dup`` scan check): :mod:`curation.similarity.near_dup_join`, linear in the bucket
  sizes. It verifies a pair only while its records are in different clusters, so it reports fewer pairs, but
  the same clusters: on the B3 truth set (17,676 banking77 + Toolformer records, thresholds 0.9-0.6) and the
  Toolformer ladder, clusters and kept members are identical to the all-pairs join's; on 50,000 heavy-family
  records it takes 4.3 s where the all-pairs join takes 48 s (``benchmarks/bench_b2_families.py``).
* ``mode="pairs"``: every pair of a bucket (up to ``bucket_window`` partners per text) is a candidate and every
  candidate is verified, so ``pairs`` holds every pair found above the threshold: for checks that read the
  pairs themselves (the inconsistency check's prompt candidates). Quadratic in the bucket sizes.

Each cluster keeps the member with the smallest :class:`~curation.similarity.exact.KeepRank` (approved in review,
best quality, earliest ingest, smallest id), and every member's exact Jaccard similarity to the kept member is
computed once the kept member is chosen, whichever pairs were verified.

Union-find is transitive: in a chain a~b~c, ``c`` may be less similar to the kept ``a`` than the threshold.
Such a member still carries its true similarity to the kept record, plus its most similar verified neighbour,
so the catalog says exactly why it was removed.

The result does not depend on the order of the input: texts are processed in record-id order.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.similarity.band_shuffle import distributed_band_runs
from curation.similarity.exact import DuplicateCluster, KeepRank, rank_key
from curation.similarity.jaccard import ShingleRuns, ShingleSets, ragged_arange, verify_pairs
from curation.similarity.lsh import candidate_pairs, collision_probability, optimal_params, sorted_unique
from curation.similarity.minhash import MinHasher, MinHashParams, Sketches, estimate_pairs
from curation.similarity.near_dup_join import BandRuns, JoinPlan, JoinState, band_runs, join_clusters
from curation.similarity.shingles import ShingleBatch
from curation.similarity.union_find import ArrayUnionFind

if TYPE_CHECKING:
    from curation.executors import Executor

Scope = Literal["pair", "prompt", "response"]
JoinMode = Literal["pairs", "clusters"]


def scope_text(prompt: str, response: str, scope: Scope) -> str:
    """The text a scope compares: the prompt, the response, or both (``pair``)."""
    if scope == "prompt":
        return prompt
    if scope == "response":
        return response
    return f"{prompt}\n{response}"


class NearDupConfig(BaseModel):
    """Configuration of the ``near_dup`` check (``refinery scan --threshold --scope``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.7, gt=0.0, le=1.0, description="Minimum exact Jaccard similarity of a pair.")
    scope: Scope = Field("pair", description="Text compared: the whole pair, the prompt alone or the response.")
    num_perm: int = Field(128, ge=2, le=4096, description="MinHash permutations per signature.")
    ngram: int = Field(5, ge=1, le=64, description="Tokens per shingle (characters for scripts without spaces).")
    bands: int | None = Field(None, ge=1, description="LSH bands; derived from the threshold when unset.")
    rows: int | None = Field(None, ge=1, description="LSH rows per band; set together with bands.")
    false_positive_weight: float = Field(
        0.02, ge=0.0, le=1.0, description="Weight of the false-positive area when deriving bands/rows."
    )
    false_negative_weight: float = Field(
        0.98,
        ge=0.0,
        le=1.0,
        description="Weight of the false-negative area; high because verification removes false positives.",
    )
    bucket_window: int = Field(1000, ge=1, description="Most partners per text in one LSH bucket (pairs join).")
    bucket_partners: int = Field(
        4,
        ge=0,
        description="Clusters join: links of a text to the next texts of its LSH bucket per band (besides the "
        "bucket's anchor), in an order drawn anew per band.",
    )
    bucket_completion: int = Field(
        16,
        ge=0,
        description="Clusters join: a bucket whose pairs across clusters are at most this many per member is "
        "verified completely (a family with a few stragglers; every bucket of up to 2x+1 texts).",
    )
    completion_limit: int = Field(
        4_000_000,
        ge=0,
        description="Clusters join: when completing every LSH bucket takes at most this many pairs across "
        "clusters, every bucket is completed and the clusters are those of every pair of every bucket (the "
        "all-pairs join's, without its bucket_window cap); about 8 s at most.",
    )
    prefilter_sigmas: float | None = Field(
        4.0,
        ge=0.0,
        description="Skip verifying candidates whose MinHash estimate is more than this many standard errors "
        "below the threshold (at 4, a pair at the threshold is lost with probability about 3e-5); None verifies "
        "every candidate.",
    )
    sampled_prefilter_sigmas: float = Field(
        2.5,
        ge=0.0,
        description="Clusters join: the prefilter of the sampled steps (neighbour links, cheap buckets), in "
        "standard errors below the threshold: a pair at the threshold is skipped with probability 0.6%, and a "
        "link is lost only if no other verified pair joins the two clusters. Never looser than prefilter_sigmas.",
    )
    seed: int = Field(1, description="Seed of the MinHash permutations (changes every signature).")

    @model_validator(mode="after")
    def _bands_and_rows(self) -> NearDupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set bands and rows together, or neither")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def band_params(self) -> tuple[int, int]:
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return optimal_params(self.threshold, self.num_perm, self.false_positive_weight, self.false_negative_weight)

    def prefilter_floors(self) -> tuple[float, float]:
        """The MinHash estimates below which a candidate is not verified: (exact steps, sampled steps)."""
        if self.prefilter_sigmas is None:
            return -1.0, -1.0
        sigma = math.sqrt(self.threshold * (1 - self.threshold) / self.num_perm)
        floor = self.threshold - self.prefilter_sigmas * sigma
        return floor, max(floor, self.threshold - self.sampled_prefilter_sigmas * sigma)

    def minhash_params(self) -> MinHashParams:
        return MinHashParams(num_perm=self.num_perm, ngram=self.ngram, seed=self.seed)


@dataclass(frozen=True)
class Neighbour:
    record_id: str
    similarity: float


@dataclass
class NearDupResult:
    clusters: list[DuplicateCluster]
    pairs: list[tuple[str, str, float]]  # verified (left id, right id, exact Jaccard), left < right
    nearest: dict[str, Neighbour]  # most similar verified neighbour of each record in a pair
    empty: set[str]  # records whose text has no shingles (they take no part)
    stats: dict[str, Any] = field(default_factory=dict)


def find_near_duplicates(
    record_ids: Sequence[str],
    texts: Sequence[str],
    ranks: dict[str, KeepRank],
    config: NearDupConfig | None = None,
    sketches: Sketches | None = None,
    prefix: str = "nd_",
    *,
    mode: JoinMode = "pairs",
    shingles: ShingleRuns | None = None,
    executor: Executor | None = None,
    stage: str = "near_dup",
) -> NearDupResult:
    """Near-duplicate clusters among ``texts`` (``sketches``, when given, are aligned with the input order).

    ``mode="pairs"`` verifies every candidate pair, so ``pairs`` holds every pair found above the threshold
    (for checks that read pairs); ``mode="clusters"`` runs the linear join of :mod:`curation.similarity.near_dup_join`:
    the clusters and similarities to the kept member, with ``pairs`` only the verified pairs that joined them.
    ``shingles`` (clusters mode) holds sets collected while sketching, numbered like the input. With a distributed
    ``executor`` (clusters mode), the band keys are computed and joined there (stage ``STAGE:bands``,
    :mod:`curation.similarity.band_shuffle`), and the join runs there too, one task per group of texts linked by
    buckets (stage ``STAGE:join``, :mod:`curation.similarity.group_join`); the clusters do not change.
    """
    config = config or NearDupConfig()
    if len(record_ids) != len(texts):
        raise ValueError("record_ids and texts differ in length")
    clock = [time.perf_counter()]
    ids = list(record_ids)
    if any(a > b for a, b in itertools.pairwise(ids)):  # sort by record id, unless sorted (then no copies)
        order = sorted(range(len(ids)), key=ids.__getitem__)
        ids = [ids[i] for i in order]
        texts = [texts[i] for i in order]
        if sketches is not None:
            sketches = Sketches(sketches.signatures[order], sketches.n_shingles[order])
        if shingles is not None:
            new_of_old = np.empty(len(order), dtype=np.int64)
            new_of_old[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
            shingles = shingles.renumbered(new_of_old)
    if sketches is None:
        hook = None
        if mode == "clusters":
            shingles = ShingleRuns()
            hook = functools.partial(_collect, shingles)
        sketches = MinHasher(config.minhash_params()).sketch(texts, on_batch=hook)
    active = sketches.n_shingles > 0
    clock.append(time.perf_counter())
    if mode == "clusters" and executor is not None and executor.kind != "local":
        return _on_executor(ids, texts, ranks, config, sketches, shingles, prefix, executor, stage, clock)
    finder = ArrayUnionFind(len(ids))
    if mode == "clusters":
        good_left, good_right, similarity, sets, stats = _join_clusters(texts, sketches, config, finder, shingles)
    else:
        good_left, good_right, similarity, sets, stats = _join_pairs(texts, sketches, config, finder)
    clock.append(time.perf_counter())  # the join's own stage times are in stats
    nearest = nearest_neighbours(ids, good_left, good_right, similarity)
    clusters = clusters_of(ids, finder.groups(), ranks, sets, prefix)
    clock.append(time.perf_counter())
    sketch_seconds, join_seconds, cluster_seconds = np.diff(clock).round(3).tolist()
    candidates_seconds = stats.pop("candidates_seconds")
    stats.update(
        empty_texts=int((~active).sum()),
        stage_seconds={
            "sketch": sketch_seconds,
            "candidates": candidates_seconds,
            "verify": round(join_seconds - candidates_seconds, 3),
            "cluster": cluster_seconds,
        },
    )
    empty = {ids[i] for i in np.flatnonzero(~active).tolist()}
    pairs = [
        (ids[i], ids[j], s)
        for i, j, s in zip(good_left.tolist(), good_right.tolist(), similarity.tolist(), strict=True)
    ]
    return NearDupResult(clusters, pairs, nearest, empty, stats)


JoinOutput = tuple[np.ndarray, np.ndarray, np.ndarray, ShingleSets, dict[str, Any]]


def _on_executor(
    ids: list[str],
    texts: Sequence[str],
    ranks: dict[str, KeepRank],
    config: NearDupConfig,
    sketches: Sketches,
    shingles: ShingleRuns | None,
    prefix: str,
    executor: Executor,
    stage: str,
    clock: list[float],
) -> NearDupResult:
    """Clusters mode on a distributed executor: the band join as a shuffle, then the join in tasks over groups of
    texts linked by buckets, each given its texts' ids, ranks, signatures and shingle sets."""
    from curation.similarity import group_join

    bands, rows = config.band_params()
    active = sketches.n_shingles > 0
    runs = distributed_band_runs(executor, sketches.signatures, np.flatnonzero(active), bands, rows, f"{stage}:bands")
    needed = sorted_unique(np.concatenate([r.members for r in runs]).astype(np.int64))
    compact = [BandRuns(np.searchsorted(needed, r.members).astype(np.int32), r.starts) for r in runs]
    plan = group_join.plan_tasks(compact, len(needed), group_join.TASK_ROWS)
    exact = group_join.exact_without_count(compact, config)
    del runs, compact
    sets = ShingleSets(texts, needed, config.ngram, collected=shingles)
    candidates_seconds = time.perf_counter() - clock[-1]
    inputs = []
    for task in range(plan.tasks):
        rows_of = needed[plan.task_of == task]  # ascending: the task's numbering
        local = np.searchsorted(sets.positions, rows_of)
        sizes = sets.sizes[local]
        task_ids = [ids[i] for i in rows_of.tolist()]
        texts_of = group_join.TaskTexts(
            task_ids, [ranks[i] for i in task_ids], sketches.signatures[rows_of],
            sets.values[ragged_arange(sets.starts[local], sizes)], sizes,
        )  # fmt: skip
        inputs.append((plan.runs[task], texts_of))
    del sets
    run = functools.partial(_join_group_task, config, prefix)
    if not exact:  # the count pass decides whether step 3 completes every bucket, over all tasks
        counted = sum(
            r.completion_pairs for r in executor.map(run, [(*i, None) for i in inputs], stage=f"{stage}:count")
        )
        exact = counted <= config.completion_limit
    results = list(executor.map(run, [(*i, exact) for i in inputs], stage=f"{stage}:join"))
    clusters = sorted((c for r in results for c in r.clusters), key=lambda c: c.cluster_id)
    nearest = {k: v for r in results for k, v in r.nearest.items()}
    clock.append(time.perf_counter())
    stats = _clusters_join_stats(config, bands, rows, group_join.sum_counts(results))
    stats.update(
        completion_pairs=sum(r.completion_pairs for r in results),
        exact=int(exact),
        buckets_sampled=sum(r.buckets_sampled for r in results),
        join_tasks=plan.tasks,
        empty_texts=int((~active).sum()),
        stage_seconds={
            "sketch": round(clock[1] - clock[0], 3),
            "candidates": round(candidates_seconds, 3),
            "join": round(clock[2] - clock[1] - candidates_seconds, 3),
        },
    )
    empty = {ids[i] for i in np.flatnonzero(~active).tolist()}
    return NearDupResult(clusters, [], nearest, empty, stats)


def _join_group_task(config: NearDupConfig, prefix: str, task: tuple[Any, Any, bool | None]) -> Any:
    from curation.similarity import group_join

    runs, texts, exact = task
    return group_join.join_task(config, prefix, group_join.JoinTask(runs, exact), texts)


def _join_clusters(
    texts: Sequence[str],
    sketches: Sketches,
    config: NearDupConfig,
    finder: ArrayUnionFind,
    shingles: ShingleRuns | None,
) -> JoinOutput:
    """The linear join: buckets per band, shingle sets of their members, :func:`join_clusters`."""
    started = time.perf_counter()
    bands, rows = config.band_params()
    active = np.flatnonzero(sketches.n_shingles > 0)
    runs = [band_runs(sketches.signatures, active, band, rows) for band in range(bands)]
    sets = ShingleSets(texts, np.concatenate([r.members for r in runs]), config.ngram, collected=shingles)
    floor, sampled_floor = config.prefilter_floors()
    state = JoinState(finder, sketches.signatures, floor, config.threshold, sets.jaccard)
    candidates_seconds = time.perf_counter() - started
    plan = JoinPlan(config.bucket_partners, config.bucket_completion, config.completion_limit, sampled_floor)
    completion = join_clusters(state, runs, plan)
    stats = _clusters_join_stats(config, bands, rows, state.counts)
    stats.update(candidates_seconds=round(candidates_seconds, 3), **completion)
    return (*state.pairs(), sets, stats)


def _clusters_join_stats(config: NearDupConfig, bands: int, rows: int, counts: dict[str, int]) -> dict[str, Any]:
    """The summary of the clusters join from its counts (one join, or the sum of its tasks')."""
    stats = match_stats(config, bands, rows, counts["candidates"], counts["verified"], counts["good"])
    stats.update(
        join="clusters",
        joined_pairs=counts["joined"],
        prefiltered_pairs=counts["prefiltered"],
        jaccard_computed=counts["verified"],
    )
    return stats


def _join_pairs(texts: Sequence[str], sketches: Sketches, config: NearDupConfig, finder: ArrayUnionFind) -> JoinOutput:
    """The all-pairs join: every pair of a bucket (up to ``bucket_window`` partners per text), all verified."""
    started = time.perf_counter()
    bands, rows = config.band_params()
    left, right = candidate_pairs(sketches.signatures, bands, rows, sketches.n_shingles > 0, config.bucket_window)
    n_candidates = len(left)
    if config.prefilter_sigmas is not None and n_candidates:
        sigma = math.sqrt(config.threshold * (1 - config.threshold) / config.num_perm)
        keep = estimate_pairs(sketches.signatures, left, right) >= config.threshold - config.prefilter_sigmas * sigma
        left, right = left[keep], right[keep]
    candidates_seconds = time.perf_counter() - started
    good_left, good_right, similarity, sets = verify_pairs(texts, left, right, config.threshold, config.ngram)
    finder.union(good_left, good_right)
    stats = match_stats(config, bands, rows, n_candidates, len(left), len(similarity))
    stats["candidates_seconds"] = round(candidates_seconds, 3)
    return good_left, good_right, similarity, sets, stats


def _collect(runs: ShingleRuns, lo: int, hi: int, batch: ShingleBatch) -> None:
    runs.add(np.arange(lo, hi), batch)


def nearest_neighbours(
    ids: list[str], left: np.ndarray, right: np.ndarray, similarity: np.ndarray
) -> dict[str, Neighbour]:
    """Most similar verified neighbour of each record (ties: the smallest record id)."""
    me = np.concatenate([left, right])
    other = np.concatenate([right, left])
    score = np.concatenate([similarity, similarity])
    order = np.lexsort((other, -score, me))
    first = np.ones(len(order), dtype=bool)
    first[1:] = me[order[1:]] != me[order[:-1]]
    best = order[first]
    return {
        ids[m]: Neighbour(ids[o], s)
        for m, o, s in zip(me[best].tolist(), other[best].tolist(), score[best].tolist(), strict=True)
    }


def clusters_of(
    ids: list[str], groups: list[list[int]], ranks: dict[str, KeepRank], sets: ShingleSets, prefix: str
) -> list[DuplicateCluster]:
    """A cluster per group: the kept member by rank, and every member's exact similarity to it."""
    kept = [min(members, key=lambda i: rank_key(ranks[ids[i]])) for members in groups]
    member_index = np.array([i for members in groups for i in members], dtype=np.int64)
    kept_index = np.repeat(np.array(kept, dtype=np.int64), [len(m) for m in groups])
    similarity = iter(sets.jaccard(member_index, kept_index).tolist())
    clusters = []
    for members, keeper in zip(groups, kept, strict=True):
        to_kept = {ids[i]: (1.0 if i == keeper else s) for i, s in zip(members, similarity, strict=False)}
        runner_up = min((i for i in members if i != keeper), key=lambda i: rank_key(ranks[ids[i]]))
        member_ids = sorted(to_kept)
        digest = hashlib.sha256("\n".join(member_ids).encode()).hexdigest()
        clusters.append(
            DuplicateCluster(
                cluster_id=f"{prefix}{digest[:16]}",
                kept=ids[keeper],
                members=tuple(member_ids),
                keep_reason=ranks[ids[keeper]].reason_against(ranks[ids[runner_up]]),
                similarities=tuple(to_kept[m] for m in member_ids),
            )
        )
    clusters.sort(key=lambda c: c.cluster_id)
    return clusters


def match_stats(
    config: NearDupConfig, bands: int, rows: int, candidates: int, kept: int, verified: int
) -> dict[str, Any]:
    """The summary every MinHash matcher reports: its parameters and how many pairs each stage kept."""
    return {
        "threshold": config.threshold,
        "scope": config.scope,
        "num_perm": config.num_perm,
        "ngram": config.ngram,
        "bands": bands,
        "rows": rows,
        "recall_at_threshold": round(collision_probability(config.threshold, bands, rows), 4),
        "candidate_pairs": candidates,
        "prefiltered_pairs": candidates - kept,
        "verified_pairs": verified,
    }
