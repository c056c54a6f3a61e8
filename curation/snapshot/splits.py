"""Splits: records are grouped (union of the clusters of the policy's ``group_by`` checks: exact prompts and
near-duplicate clusters), so no cluster spans two splits. With ``stratify`` (default) the groups of each label are
ordered by a seeded hash and dealt to the split furthest below its share; without it a group's split is a pure
function of its key and the seed (adding data then never moves an existing record). Both are deterministic.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from curation.similarity.union_find import ArrayUnionFind
from curation.snapshot.policy import SPLITS, SnapshotPolicy


def _bucket(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(group_key: str, policy: SnapshotPolicy) -> str:
    """The unstratified split of a group: a pure function of its key and the seed."""
    bucket = _bucket(group_key, policy.seed)
    if bucket < policy.train_fraction:
        return "train"
    if bucket < policy.train_fraction + policy.validation_fraction:
        return "validation"
    return "test"


def assign_splits(groups: dict[str, tuple[str | None, int]], policy: SnapshotPolicy) -> dict[str, str]:
    """Split of every group (key -> (label, size)). Stratified: per label, groups in seeded-hash order each go
    to the split furthest below its share of that label's records (ties: train, validation, test)."""
    if not policy.stratify or all(label is None for label, _ in groups.values()):
        return {key: split_of(key, policy) for key in groups}
    fractions = policy.fractions()
    by_label: dict[str, list[str]] = defaultdict(list)
    for key, (label, _) in groups.items():
        by_label[label or ""].append(key)
    assigned: dict[str, str] = {}
    for label in sorted(by_label):
        keys = sorted(by_label[label], key=lambda k: (_bucket(k, policy.seed), k))
        filled = dict.fromkeys(SPLITS, 0)
        total = 0
        for key in keys:
            total += groups[key][1]
            split = max(SPLITS, key=lambda s: (fractions[s] * total - filled[s], -SPLITS.index(s)))
            filled[split] += groups[key][1]
            assigned[key] = split
    return assigned


def group_roots(links: Sequence[tuple[str, str]], nodes: Sequence[str]) -> dict[str, str]:
    """The root of each of ``nodes`` in the graph of ``links``: the smallest name of its connected component.

    Names are numbered in sorted order, so the union-find's smallest index is the smallest name: ``"c:..."`` sorts
    before ``"r:..."``, so a record in a cluster has its smallest cluster as the root, and a record in none itself.
    """
    names = sorted({*nodes, *(name for link in links for name in link)})
    index = {name: i for i, name in enumerate(names)}
    finder = ArrayUnionFind(len(names))
    if links:
        left, right = zip(*((index[a], index[b]) for a, b in links), strict=True)
        finder.union(np.array(left, dtype=np.int64), np.array(right, dtype=np.int64))
    return {node: names[int(finder.parent[index[node]])] for node in nodes}


def group_keys(clusters: Sequence[tuple[str, str, str]], records: Sequence[str]) -> dict[str, str]:
    """The group of each of ``records`` given the ``(check, cluster id, record id)`` rows of the group_by checks:
    the smallest cluster id it is connected to through them, or its own id when it is in no cluster."""
    links = [(f"c:{check}:{cluster_id}", f"r:{rid}") for check, cluster_id, rid in clusters]
    roots = group_roots(links, [f"r:{rid}" for rid in records])
    keys = {}
    for rid in records:
        root = roots[f"r:{rid}"]
        keys[rid] = root[2:] if root.startswith("r:") else root.split(":", 2)[2]
    return keys


def majority(labels: list[str | None]) -> str | None:
    counts = Counter(label for label in labels if label is not None)
    if not counts:
        return None
    return min(counts, key=lambda label: (-counts[label], label))
