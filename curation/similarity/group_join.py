"""The linear join of :mod:`curation.similarity.near_dup_join` split into independent tasks: one per group of texts
linked by shared LSH buckets.

No candidate pair crosses a group (a pair shares a bucket, and a bucket lies in one group), and every step of the join
touches one group's pairs in the order the whole join would: a pair is offered when its band comes, screened and
verified by its own estimate and similarity, batched with the pairs of its own two clusters, and skipped when
union-find (whose roots are a group's smallest member) already joins it. So a task that joins some groups alone gets
the clusters, verified pairs and similarities it gets when every text is joined at once, provided its texts are
numbered in their global order (the orders within buckets are drawn from the global numbers) and it is told the one
decision taken over all groups: whether step 3 completes every bucket (at most ``completion_limit`` pairs across
clusters in all), which a first pass of the same tasks counts (:func:`join_task` with ``exact=None``) unless the
buckets' pairs alone are within the limit (:func:`exact_without_count`).

Used by ``refinery scan --executor ray`` (:func:`~curation.similarity.near_dup.find_near_duplicates`, the texts in the
driver) and by ``refinery dedup`` (:mod:`curation.similarity.near_dup_files`, the texts in Parquet files).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from curation.similarity.exact import DuplicateCluster, KeepRank
from curation.similarity.jaccard import ShingleRuns, ShingleSets
from curation.similarity.near_dup import NearDupConfig, Neighbour, clusters_of, nearest_neighbours
from curation.similarity.near_dup_join import (
    BandRuns,
    JoinPlan,
    JoinState,
    anchor_links,
    complete_clusters,
    link_clusters,
)
from curation.similarity.union_find import ArrayUnionFind

TASK_ROWS = 100_000  # texts per join task (a bigger group gets a task of its own)


@dataclass(frozen=True)
class TaskPlan:
    """Which task joins each text (numbered ``0..m-1``), its number there, and each task's buckets."""

    task_of: np.ndarray
    local_of: np.ndarray
    runs: list[list[BandRuns]]  # per task, per band

    @property
    def tasks(self) -> int:
        return len(self.runs)


def plan_tasks(runs: list[BandRuns], m: int, task_rows: int) -> TaskPlan:
    """Groups of the ``m`` texts linked by the buckets ``runs``, packed in order into tasks of about ``task_rows``."""
    groups = ArrayUnionFind(m)
    for band in runs:
        left, right = anchor_links(band)
        groups.union(left.astype(np.int64), right.astype(np.int64))
    roots, size = np.unique(groups.parent, return_counts=True)
    first = np.cumsum(size) - size  # groups in the order of their smallest text
    _, group_task = np.unique(first // max(1, task_rows), return_inverse=True)  # no empty task numbers
    task_of = group_task[np.searchsorted(roots, groups.parent)] if m else np.zeros(0, dtype=np.int64)
    tasks = int(group_task.max()) + 1 if m else 1
    order = np.argsort(task_of, kind="stable")
    counts = np.bincount(task_of, minlength=tasks)
    local_of = np.empty(m, dtype=np.int64)
    local_of[order] = np.arange(m) - np.repeat(np.cumsum(counts) - counts, counts)
    return TaskPlan(task_of, local_of, _task_runs(runs, task_of, local_of, tasks))


def _task_runs(runs: list[BandRuns], task_of: np.ndarray, local_of: np.ndarray, tasks: int) -> list[list[BandRuns]]:
    """Each task's buckets, band by band, in their order, their texts numbered in the task."""
    out: list[list[BandRuns]] = [[] for _ in range(tasks)]
    for band in runs:
        lengths = band.lengths
        bucket_task = task_of[band.members[band.starts[:-1]]] if len(lengths) else np.zeros(0, dtype=np.int64)
        member_task = np.repeat(bucket_task, lengths)
        order = np.argsort(member_task, kind="stable")  # buckets and members keep their order within a task
        members = local_of[band.members[order]].astype(np.int32)
        member_cuts = np.searchsorted(member_task[order], np.arange(1, tasks))
        bucket_order = np.argsort(bucket_task, kind="stable")
        bucket_cuts = np.searchsorted(bucket_task[bucket_order], np.arange(1, tasks))
        for task, (task_members, task_lengths) in enumerate(
            zip(np.split(members, member_cuts), np.split(lengths[bucket_order], bucket_cuts), strict=True)
        ):
            starts = np.concatenate([[0], np.cumsum(task_lengths)]).astype(np.int64)
            out[task].append(BandRuns(task_members, starts))
    return out


def exact_without_count(runs: list[BandRuns], config: NearDupConfig) -> bool:
    """True when every bucket's pairs together are within ``completion_limit``: step 3 completes every bucket, and
    no counting pass is needed (pairs across clusters are a part of the buckets' pairs)."""
    pairs = sum(int((band.lengths * (band.lengths - 1) // 2).sum()) for band in runs)
    return pairs <= config.completion_limit


@dataclass(frozen=True)
class JoinTask:
    """A task's buckets (its texts numbered in the task) and whether step 3 completes every bucket (None: the
    counting pass)."""

    runs: list[BandRuns]
    exact: bool | None


@dataclass(frozen=True)
class TaskTexts:
    """A task's texts in their order: ids, ranks, signatures and exact shingle sets (one after another)."""

    ids: list[str]
    ranks: list[KeepRank]
    signatures: np.ndarray
    values: np.ndarray
    sizes: np.ndarray


@dataclass
class TaskResult:
    completion_pairs: int  # what step 3 completes (or would) in this task's buckets
    clusters: list[DuplicateCluster]
    nearest: dict[str, Neighbour]
    counts: dict[str, int]
    buckets_sampled: int = 0


def join_task(config: NearDupConfig, prefix: str, task: JoinTask, texts: TaskTexts) -> TaskResult:
    """The linear join over one task's groups: its clusters (or, with ``exact=None``, only its count)."""
    m = len(texts.ids)
    collected = ShingleRuns()
    collected.add_sets(np.arange(m), texts.values, texts.sizes)
    sets = ShingleSets([], np.arange(m), config.ngram, collected=collected)
    floor, sampled_floor = config.prefilter_floors()
    state = JoinState(ArrayUnionFind(m), texts.signatures, floor, config.threshold, sets.jaccard)
    plan = JoinPlan(config.bucket_partners, config.bucket_completion, config.completion_limit, sampled_floor)
    costs = link_clusters(state, task.runs, plan)
    if task.exact is None:
        return TaskResult(int(sum(int(c.sum()) for c in costs)), [], {}, {})
    done = complete_clusters(state, task.runs, plan, costs, task.exact)
    ranks = dict(zip(texts.ids, texts.ranks, strict=True))
    clusters = clusters_of(texts.ids, state.finder.groups(), ranks, sets, prefix)
    nearest = nearest_neighbours(texts.ids, *state.pairs())
    counts = {k: state.counts[k] for k in ("candidates", "verified", "joined", "prefiltered", "good")}
    return TaskResult(done["completion_pairs"], clusters, nearest, counts, done["buckets_sampled"])


def sum_counts(results: Iterable[TaskResult]) -> dict[str, int]:
    """The tasks' counts added up (the counts one join over every group would report)."""
    total = dict.fromkeys(("candidates", "verified", "joined", "prefiltered", "good"), 0)
    for result in results:
        for key in total:
            total[key] += result.counts.get(key, 0)
    return total
