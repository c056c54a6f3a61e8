"""The LSH band join as a shuffle by band-bucket key: which texts share a bucket, found without one process holding
every key.

A text's bucket in band ``b`` is its key :func:`~curation.similarity.lsh.band_key`; only buckets of two or more
texts give candidates, and in real corpora most texts share none. Each map task computes the keys of its shard's
texts in every band and cuts them into ``partitions`` parts by key (:func:`band_parts`); reduce task ``p`` gets part
``p`` of every shard, so it sees every text of its buckets, and keeps the texts of the buckets of two or more
(:func:`shared_entries`). The driver gets only those (:func:`shared_by_band`): per band, the rows that share their key,
in row order, with their keys, which is what :func:`~curation.similarity.near_dup_join.band_runs_from_keys` needs to
build the same buckets, in the same order, as from every key at once. A reduce task holds ``N * bands /
partitions`` entries of 13 bytes; :func:`partitions_for` picks ``partitions`` to keep that near
:data:`PART_ENTRIES`, whatever N.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from curation.similarity.lsh import band_key
from curation.similarity.near_dup_join import BandRuns, band_runs_from_keys

if TYPE_CHECKING:
    from curation.executors import Executor

#: One entry per text and band: its bucket key, its row and the band (13 bytes, packed).
ENTRY = np.dtype([("key", "<u8"), ("row", "<i4"), ("band", "u1")])
PART_ENTRIES = 4_000_000  # entries a reduce task should hold (52 MB)


def partitions_for(texts: int, bands: int) -> int:
    """Reduce tasks for ``texts`` texts: about :data:`PART_ENTRIES` entries each, at least one."""
    return max(1, math.ceil(texts * bands / PART_ENTRIES))


def band_parts(
    signatures: np.ndarray, rows: np.ndarray, bands: int, band_rows: int, partitions: int
) -> list[np.ndarray]:
    """The entries of these texts (``rows``: their global row numbers; texts without shingles left out by the caller)
    in every band, cut into ``partitions`` parts by key."""
    if bands > 255:
        raise ValueError(f"{bands} bands: at most 255 fit the shuffle's entries")
    if len(rows) and int(rows.max()) >= 2**31:
        raise ValueError("more than 2^31 texts: rows are kept as int32")
    entries = np.empty(len(rows) * bands, dtype=ENTRY)
    for band in range(bands):
        part = entries[band * len(rows) : (band + 1) * len(rows)]
        part["key"] = band_key(signatures, band, band_rows)
        part["row"] = rows
        part["band"] = band
    target = (entries["key"] % np.uint64(partitions)).astype(np.int64)
    order = np.argsort(target, kind="stable")
    cuts = np.searchsorted(target[order], np.arange(1, partitions))
    return [np.ascontiguousarray(part) for part in np.split(entries[order], cuts)]


def shared_entries(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The entries of one partition whose (band, key) bucket holds two or more texts, sorted by (band, row)."""
    entries = np.concatenate(parts) if len(parts) else np.empty(0, dtype=ENTRY)
    if len(entries) < 2:
        return np.empty(0, dtype=ENTRY)
    order = np.lexsort((entries["key"], entries["band"]))
    band, key = entries["band"][order], entries["key"][order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
    run = np.cumsum(new) - 1
    shared = entries[order[np.bincount(run)[run] >= 2]]
    return shared[np.lexsort((shared["row"], shared["band"]))]


def shared_by_band(partitions: Iterable[np.ndarray], bands: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per band, ``(rows, keys)`` of the texts that share their bucket with another, rows ascending.

    Each partition (sorted by band, then row) is cut by band as it comes, and each band is assembled on its own: the
    driver holds the shared entries once, 12 bytes each, plus one band's worth of sorting."""
    rows: list[list[np.ndarray]] = [[] for _ in range(bands)]
    keys: list[list[np.ndarray]] = [[] for _ in range(bands)]
    for part in partitions:
        if not len(part):
            continue
        cuts = np.searchsorted(part["band"], np.arange(1, bands))
        for band, piece in enumerate(np.split(part, cuts)):
            if len(piece):
                rows[band].append(piece["row"].copy())
                keys[band].append(piece["key"].copy())
        del part
    out = []
    for band in range(bands):
        band_rows = np.concatenate(rows[band]) if rows[band] else np.zeros(0, dtype=np.int32)
        band_keys = np.concatenate(keys[band]) if keys[band] else np.zeros(0, dtype=np.uint64)
        rows[band], keys[band] = [], []
        order = np.argsort(band_rows, kind="stable")
        out.append((band_rows[order].astype(np.int64), band_keys[order]))
    return out


def _map_shard(bands: int, band_rows: int, partitions: int, shard: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    signatures, rows = shard
    return band_parts(signatures, rows, bands, band_rows, partitions)


def distributed_band_runs(
    executor: Executor, signatures: np.ndarray, active: np.ndarray, bands: int, band_rows: int, stage: str
) -> list[BandRuns]:
    """:func:`~curation.similarity.near_dup_join.band_runs` of every band, the keys computed and joined on the
    executor (stage ``STAGE:map`` / ``STAGE:reduce``): the same buckets in the same order, while the driver receives
    only the rows that share a bucket."""
    size = executor.shard_records
    shards = [(signatures[active[lo : lo + size]], active[lo : lo + size]) for lo in range(0, len(active), size)]
    partitions = partitions_for(len(active), bands)
    task = functools.partial(_map_shard, bands, band_rows, partitions)
    found = executor.shuffle(task, shards, shared_entries, partitions=partitions, stage=stage)
    return [band_runs_from_keys(keys, rows, band) for band, (rows, keys) in enumerate(shared_by_band(found, bands))]
