"""Union-find over the integers ``0..n-1``, the one every grouping in curation uses: near-duplicate clusters
(batches of verified pairs, numpy), paraphrase clusters, and the snapshot's split groups (records and the
duplicate clusters they belong to, numbered by the caller).

Roots are the smallest index of their component, so the result never depends on the order of unions: a caller
that numbers its items in sorted order gets the smallest item as the representative of each group.
"""

from __future__ import annotations

import numpy as np


class ArrayUnionFind:
    """Union-find over ``0..n-1`` as one numpy array, kept fully compressed: ``parent[i]`` is ``i``'s root.

    Roots are the smallest index of their component, so the result does not depend on the order of unions.
    Unions come in batches: each round hooks every root to the smallest root it has an edge to (always to a
    smaller index, so no cycle can form), then pointer jumping flattens the array again.
    """

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def roots(self, items: np.ndarray) -> np.ndarray:
        return self.parent[items]

    def union(self, left: np.ndarray, right: np.ndarray) -> None:
        while len(left):
            a, b = self.parent[left], self.parent[right]
            apart = a != b
            if not apart.any():
                return
            left, right, a, b = left[apart], right[apart], a[apart], b[apart]
            np.minimum.at(self.parent, np.maximum(a, b), np.minimum(a, b))
            parent = self.parent
            while True:
                grand = parent[parent]
                if np.array_equal(grand, parent):
                    break
                parent = grand
            self.parent = parent

    def groups(self) -> list[list[int]]:
        """The components of two or more items, each as its sorted items, in order of their smallest item."""
        roots = self.parent
        size = np.bincount(roots, minlength=len(roots))
        members = np.flatnonzero(size[roots] >= 2)
        if not len(members):
            return []
        members = members[np.argsort(roots[members], kind="stable")]
        cuts = np.flatnonzero(np.diff(roots[members])) + 1
        return [part.tolist() for part in np.split(members, cuts)]
