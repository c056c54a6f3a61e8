"""Near-duplicate clusters of a corpus in Parquet shards, without one process holding the corpus or its signatures.

The path for corpora past one machine's memory (docs/SCALE.md). The records stay in their Parquet files (columns
``record_id``, ``prompt``, ``response``; rows numbered in file-name order, then row order), and every stage that
touches all of them runs in tasks over the files, on the executor (this process, or Ray):

1. **sketch and band** (shuffle ``near_dup:bands``): each map task reads one file, shingles and sketches its texts,
   writes their signatures next to it (``signatures/NNNNN.parquet`` under ``workdir``, atomically: a rerun task
   overwrites its own file) and cuts their LSH band keys into parts by key; each reduce task keeps the texts that
   share a bucket (:mod:`curation.similarity.band_shuffle`).
2. **gather** (``near_dup:gather``): for each file, the rows that share a bucket: their ids, signatures and shingle
   sets, read back from the file and its signatures.
3. **join** (the driver): the linear join of :mod:`curation.similarity.near_dup_join` over those rows alone,
   numbered ``0..m-1`` in row order with the bucket orders drawn from their row numbers, so the clusters, kept
   members and similarities are those :func:`~curation.similarity.near_dup.find_near_duplicates` gives on every
   record in the same order. The driver holds the rows that share a bucket (``m`` of ``n``), never the others.

Each worker holds one file at a time; a reduce task about :data:`~curation.similarity.band_shuffle.PART_ENTRIES`
entries. The kept member of a cluster is its smallest record id (no review or quality ranks here). The clusters are
written to ``workdir/clusters.parquet`` (one row per member), for the catalog's single writer to load.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.executors.base import peak_rss_mb
from curation.similarity.band_shuffle import band_parts, partitions_for, shared_by_band, shared_entries
from curation.similarity.exact import DuplicateCluster, KeepRank
from curation.similarity.jaccard import ShingleRuns, ShingleSets
from curation.similarity.minhash import MinHasher, from_bytes
from curation.similarity.near_dup import NearDupConfig, Scope, clusters_of, nearest_neighbours, scope_text
from curation.similarity.near_dup_join import JoinPlan, JoinState, band_runs_from_keys, join_clusters
from curation.similarity.shingles import ShingleBatch, shingle_batch
from curation.similarity.union_find import ArrayUnionFind
from schemas.errors import InputError
from schemas.progress import log, progress

if TYPE_CHECKING:
    from curation.executors import Executor

COLUMNS = ("record_id", "prompt", "response")
GATHER_BATCH = 2_000  # texts shingled at once by a gather task


@dataclass(frozen=True)
class FileShard:
    index: int
    path: str
    first_row: int  # global row number of the file's first row
    rows: int


@dataclass
class FileNearDupResult:
    clusters: list[DuplicateCluster]
    records: int
    empty: int  # records without shingles (they take no part)
    shared_rows: int  # records that share an LSH bucket: what the driver held
    stats: dict[str, Any] = field(default_factory=dict)


def file_shards(paths: Sequence[Path]) -> list[FileShard]:
    """The files in order with their row counts (from the Parquet footers) and first global row."""
    shards, first = [], 0
    for index, path in enumerate(paths):
        try:
            meta = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
        missing = [c for c in COLUMNS if c not in meta.schema_arrow.names]
        if missing:
            raise InputError(f"{path}: no column {', '.join(missing)} (needs {', '.join(COLUMNS)})")
        rows = meta.metadata.num_rows
        shards.append(FileShard(index, str(path), first, rows))
        first += rows
    if first >= 2**31:
        raise InputError(f"{first} records: at most 2^31 - 1 in one run")
    return shards


def _texts(path: str, scope: Scope, rows: np.ndarray | None = None) -> tuple[list[str], list[str]]:
    table = pq.read_table(path, columns=list(COLUMNS))
    if rows is not None:
        table = table.take(pa.array(rows))
    prompts, responses = table.column("prompt").to_pylist(), table.column("response").to_pylist()
    ids = table.column("record_id").to_pylist()
    return ids, [scope_text(p or "", r or "", scope) for p, r in zip(prompts, responses, strict=True)]


def _signature_path(workdir: str, index: int) -> str:
    return os.path.join(workdir, "signatures", f"{index:05d}.parquet")


def _sketch_and_band(config: NearDupConfig, workdir: str, partitions: int, shard: FileShard) -> list[np.ndarray]:
    """Map task of stage 1: sketch one file, store its signatures, its band keys cut into parts."""
    _, texts = _texts(shard.path, config.scope)
    sketches = MinHasher(config.minhash_params()).sketch(texts)
    del texts
    blobs = sketches.signatures.astype("<u4", copy=False).view(np.uint8).reshape(len(sketches.n_shingles), -1)
    table = pa.table({"n_shingles": sketches.n_shingles, "signature": [row.tobytes() for row in blobs]})
    final = _signature_path(workdir, shard.index)
    partial = f"{final}.{os.getpid()}.tmp"
    pq.write_table(table, partial)
    os.replace(partial, final)  # a retried task replaces what its first try left
    active = np.flatnonzero(sketches.n_shingles > 0)
    bands, rows = config.band_params()
    return band_parts(sketches.signatures[active], active + shard.first_row, bands, rows, partitions)


@dataclass(frozen=True)
class Gathered:
    rows: np.ndarray  # global rows, ascending
    ids: list[str]
    signatures: np.ndarray
    shingles: list[tuple[np.ndarray, ShingleBatch]]  # (rows, their shingles), a batch at a time
    empty: int


def _gather(config: NearDupConfig, workdir: str, task: tuple[FileShard, np.ndarray]) -> Gathered:
    """Task of stage 2: the rows of one file that share a bucket, with what the join needs of them."""
    shard, rows = task
    signatures = pq.read_table(_signature_path(workdir, shard.index))
    if signatures.num_rows != shard.rows:
        raise InputError(f"{shard.path}: {shard.rows} rows but {signatures.num_rows} signatures: the file changed")
    empty = int((signatures.column("n_shingles").to_numpy() == 0).sum())
    local = rows - shard.first_row
    blobs = signatures.column("signature").take(pa.array(local)).to_pylist()
    ids, texts = _texts(shard.path, config.scope, local) if len(local) else ([], [])
    batches = [
        (rows[lo : lo + GATHER_BATCH], shingle_batch(texts[lo : lo + GATHER_BATCH], config.ngram))
        for lo in range(0, len(texts), GATHER_BATCH)
    ]  # a batch at a time: shingling holds several arrays per character of the texts it is given
    return Gathered(rows, ids, from_bytes(blobs, config.num_perm), batches, empty)


def near_dup_files(
    paths: Sequence[Path],
    config: NearDupConfig,
    executor: Executor,
    workdir: Path,
    prefix: str = "nd_",
    keep_signatures: bool = False,
) -> FileNearDupResult:
    """Near-duplicate clusters of the records in ``paths`` (see the module docstring) into ``workdir/clusters.parquet``;
    the signatures the workers wrote under ``workdir/signatures`` are removed at the end unless ``keep_signatures``
    (512 bytes a record: 5 GB at 10M)."""
    clock = {"start": time.monotonic()}
    rss: dict[str, float] = {}
    shards = file_shards(paths)
    total = shards[-1].first_row + shards[-1].rows if shards else 0
    (workdir / "signatures").mkdir(parents=True, exist_ok=True)
    bands = config.band_params()[0]
    partitions = partitions_for(total, bands)
    log(f"near_dup: {total:,} records in {len(shards)} files: sketch and band shuffle ({partitions} partitions)")
    task = functools.partial(_sketch_and_band, config, str(workdir), partitions)
    with progress("near_dup: sketch", total=len(shards)) as bar:
        found = executor.shuffle(
            task, shards, shared_entries, partitions=partitions, stage="near_dup:bands", on_map=lambda _: bar.advance(1)
        )
        per_band = shared_by_band(found, bands)
    clock["bands"] = time.monotonic()
    rss["bands"] = round(peak_rss_mb())
    needed = np.unique(np.concatenate([r for r, _ in per_band])) if per_band else np.zeros(0, dtype=np.int64)
    starts = np.array([s.first_row for s in shards], dtype=np.int64)
    owner = np.searchsorted(starts, needed, side="right") - 1
    tasks = [(s, needed[owner == s.index]) for s in shards]
    runs = [  # the rows numbered 0..m-1, the orders in buckets drawn from their row numbers
        band_runs_from_keys(keys, np.searchsorted(needed, band_rows), band, drawn=band_rows)
        for band, (band_rows, keys) in enumerate(per_band)
    ]
    del per_band
    log(f"near_dup: {len(needed):,} records share an LSH bucket ({clock['bands'] - clock['start']:.1f} s); gather")
    m = len(needed)
    ids: list[str] = []
    signatures = np.zeros((m, config.num_perm), dtype=np.uint32)
    collected = ShingleRuns()
    empty = 0
    with progress("near_dup: gather", total=len(shards)) as bar:
        gather = functools.partial(_gather, config, str(workdir))
        for part in executor.map(gather, tasks, stage="near_dup:gather"):  # each file's rows, as they come back
            at = np.searchsorted(needed, part.rows)
            ids.extend(part.ids)  # files in order, rows ascending in each: ids follow ``needed``
            signatures[at] = part.signatures
            for batch_rows, batch in part.shingles:
                collected.add(np.searchsorted(needed, batch_rows), batch)
            empty += part.empty
            del part
            bar.advance(1)
    clock["gather"] = time.monotonic()
    rss["gather"] = round(peak_rss_mb())
    sets = ShingleSets([], np.arange(m), config.ngram, collected=collected)  # every row is in a bucket
    floor, sampled_floor = config.prefilter_floors()
    finder = ArrayUnionFind(m)
    state = JoinState(finder, signatures, floor, config.threshold, sets.jaccard)
    plan = JoinPlan(config.bucket_partners, config.bucket_completion, config.completion_limit, sampled_floor)
    log(f"near_dup: join of {m:,} records")
    completion = join_clusters(state, runs, plan)
    clock["join"] = time.monotonic()
    rss["join"] = round(peak_rss_mb())
    ranks = {rid: KeepRank(1, 0.0, ("", 0, 0), rid) for rid in ids}
    clusters = clusters_of(ids, finder.groups(), ranks, sets, prefix)
    nearest = nearest_neighbours(ids, *state.pairs())
    _write_clusters(workdir / "clusters.parquet", clusters, nearest)
    if not keep_signatures:
        shutil.rmtree(workdir / "signatures", ignore_errors=True)
    clock["cluster"] = time.monotonic()
    rss["cluster"] = round(peak_rss_mb())
    names = ("bands", "gather", "join", "cluster")
    previous = ["start", *names[:-1]]
    stats = {
        "partitions": partitions,
        "stage_seconds": {k: round(clock[k] - clock[p], 3) for k, p in zip(names, previous, strict=True)},
        "driver_peak_rss_mb": rss,  # the driver's peak RSS at the end of each stage
        "jaccard_computed": state.counts["verified"],
        "candidate_pairs": state.counts["candidates"],
        **completion,
    }
    return FileNearDupResult(clusters, total, empty, m, stats)


def _write_clusters(path: Path, clusters: list[DuplicateCluster], nearest: dict[str, Any]) -> None:
    """One row per member: cluster, record, kept id, similarity to the kept member, most similar verified neighbour."""
    members = [(c, m, s) for c in clusters for m, s in zip(c.members, c.similarities, strict=True)]
    table = pa.table(
        {
            "cluster_id": [c.cluster_id for c, _, _ in members],
            "record_id": [m for _, m, _ in members],
            "kept_record_id": [c.kept for c, _, _ in members],
            "similarity_to_kept": pa.array([s for _, _, s in members], pa.float64()),
            "nearest_record_id": [nearest[m].record_id if m in nearest else None for _, m, _ in members],
            "nearest_similarity": pa.array(
                [nearest[m].similarity if m in nearest else None for _, m, _ in members], pa.float64()
            ),
        }
    )
    partial = path.with_name(path.name + ".tmp")
    pq.write_table(table, partial)
    os.replace(partial, path)
