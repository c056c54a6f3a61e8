"""Near-duplicate clusters of a corpus in Parquet shards, without one process holding the corpus, its signatures or
the shingle sets of its duplicates.

The path for corpora past one machine's memory (docs/SCALE.md). The records stay in their Parquet files (columns
``record_id``, ``prompt``, ``response``; rows numbered in file-name order, then row order), and every stage that
touches them runs in tasks on the executor (this process, or Ray):

1. **sketch and band** (shuffle ``near_dup:bands``): each map task reads one file, shingles and sketches its texts,
   writes their signatures next to it (``signatures/NNNNN.parquet`` under ``workdir``, atomically: a rerun task
   overwrites its own file) and cuts their LSH band keys into parts by key; each reduce task keeps the texts that
   share a bucket (:mod:`curation.similarity.band_shuffle`).
2. **groups** (driver): the texts that share a bucket, numbered ``0..m-1`` in row order, and their buckets; records
   linked by any bucket form a group, and groups are packed, in order, into tasks of about :data:`TASK_ROWS` rows.
3. **join** (shuffle ``near_dup:join``): each map task reads one file's rows that share a bucket (ids, signatures,
   shingle sets) and cuts them by task; each reduce task runs the linear join of
   :mod:`curation.similarity.near_dup_join` over its groups and returns their clusters. No pair crosses a group, and
   the join's steps touch only the pairs of one group at a time, in the order the whole join would, so each group
   gets the clusters it gets when every record is joined at once; the one decision over the whole corpus (whether
   every bucket is completed: at most ``completion_limit`` pairs across clusters in all) is taken first, by a pass
   of the same tasks that returns each one's count (``near_dup:count``), unless the buckets' pairs alone are within
   the limit.

So the clusters, kept members and similarities are those of :func:`~curation.similarity.near_dup.find_near_duplicates`
on every record in the same order (the orders within buckets are drawn from the global row numbers). The driver
holds the rows' bucket numbers, never texts, signatures or shingle sets; a task holds its groups (the largest group
bounds it). The kept member of a cluster is its smallest record id (no review or quality ranks here). The clusters are
written to ``workdir/clusters.parquet`` (one row per member, grouped by cluster).
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
from curation.similarity.exact import KeepRank
from curation.similarity.group_join import (
    TASK_ROWS,
    JoinTask,
    TaskResult,
    TaskTexts,
    exact_without_count,
    join_task,
    plan_tasks,
    sum_counts,
)
from curation.similarity.jaccard import ShingleSets, ragged_arange
from curation.similarity.minhash import MinHasher, from_bytes
from curation.similarity.near_dup import NearDupConfig, Scope, scope_text
from curation.similarity.near_dup_join import band_runs_from_keys
from schemas.errors import InputError
from schemas.progress import log, progress

if TYPE_CHECKING:
    from curation.executors import Executor

COLUMNS = ("record_id", "prompt", "response")
SHINGLE_CHARS = 1 << 20  # characters shingled at once by a join map task
CLUSTER_SCHEMA = pa.schema(
    [
        ("cluster_id", pa.string()),
        ("record_id", pa.string()),
        ("kept_record_id", pa.string()),
        ("similarity_to_kept", pa.float64()),
        ("nearest_record_id", pa.string()),
        ("nearest_similarity", pa.float64()),
    ]
)


@dataclass(frozen=True)
class FileShard:
    index: int
    path: str
    first_row: int  # global row number of the file's first row
    rows: int


@dataclass
class FileNearDupResult:
    records: int
    clusters: int
    clustered: int  # records in a cluster
    empty: int  # records without shingles (they take no part)
    shared_rows: int  # records that share an LSH bucket
    path: Path  # clusters.parquet
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
class JoinRows:
    """Some rows of one join task, as a map task of stage 3 read them (``local``: their numbers in the task)."""

    local: np.ndarray
    ids: list[str]
    signatures: np.ndarray
    values: np.ndarray  # their shingle sets, one after another (distinct_runs)
    sizes: np.ndarray
    empty: int  # the file's records without shingles (counted once, in the part of task 0)


@dataclass(frozen=True)
class FileRows:
    """What a map task of stage 3 reads of one file: its rows that share a bucket, their task and number there."""

    shard: FileShard
    rows: np.ndarray  # global, ascending
    task: np.ndarray
    local: np.ndarray


def _read_rows(config: NearDupConfig, workdir: str, tasks: int, wanted: FileRows) -> list[JoinRows]:
    """Map task of stage 3: one file's rows that share a bucket, cut by join task."""
    shard = wanted.shard
    signatures = pq.read_table(_signature_path(workdir, shard.index))
    if signatures.num_rows != shard.rows:
        raise InputError(f"{shard.path}: {shard.rows} rows but {signatures.num_rows} signatures: the file changed")
    empty = int((signatures.column("n_shingles").to_numpy() == 0).sum())
    local = wanted.rows - shard.first_row
    sketches = from_bytes(signatures.column("signature").take(pa.array(local)).to_pylist(), config.num_perm)
    ids, texts = _texts(shard.path, config.scope, local) if len(local) else ([], [])
    # shingled in batches of about SHINGLE_CHARS characters: shingling holds several arrays per character
    sets = ShingleSets(texts, np.arange(len(texts)), config.ngram, batch_chars=SHINGLE_CHARS)
    parts = []
    for task in range(tasks):
        mine = np.flatnonzero(wanted.task == task)
        parts.append(
            JoinRows(
                wanted.local[mine],
                [ids[i] for i in mine.tolist()],
                sketches[mine],
                sets.values[ragged_arange(sets.starts[mine], sets.sizes[mine])],
                sets.sizes[mine],
                empty if task == 0 else 0,
            )
        )
    return parts


def _join(config: NearDupConfig, prefix: str, data: list[Any]) -> dict[str, Any]:
    """Reduce task of stage 3 (and of the counting pass): the join over one task's groups."""
    task: JoinTask = data[0]
    parts: list[JoinRows] = data[1:]
    local = np.concatenate([p.local for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    if not np.array_equal(local, np.arange(len(local))):
        raise RuntimeError("a join task's rows came back out of order")
    ids = [i for p in parts for i in p.ids]
    texts = TaskTexts(
        ids,
        [KeepRank(1, 0.0, ("", 0, 0), rid) for rid in ids],  # the smallest record id is kept
        np.concatenate([p.signatures for p in parts]),
        np.concatenate([p.values for p in parts]),
        np.concatenate([p.sizes for p in parts]),
    )
    empty = sum(p.empty for p in parts)
    del parts, data
    result = join_task(config, prefix, task, texts)
    members = [(c, m, s) for c in result.clusters for m, s in zip(c.members, c.similarities, strict=True)]
    nearest = result.nearest
    table = pa.table(
        {
            "cluster_id": [c.cluster_id for c, _, _ in members],
            "record_id": [m for _, m, _ in members],
            "kept_record_id": [c.kept for c, _, _ in members],
            "similarity_to_kept": [s for _, _, s in members],
            "nearest_record_id": [nearest[m].record_id if m in nearest else None for _, m, _ in members],
            "nearest_similarity": [nearest[m].similarity if m in nearest else None for _, m, _ in members],
        },
        schema=CLUSTER_SCHEMA,
    )
    summary = TaskResult(result.completion_pairs, [], {}, result.counts, result.buckets_sampled)  # the rest is in table
    return {"result": summary, "clusters": len(result.clusters), "table": table, "empty": empty}


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
    m = len(needed)
    runs = [  # the rows numbered 0..m-1, the orders in buckets drawn from their row numbers
        band_runs_from_keys(keys, np.searchsorted(needed, band_rows), band, drawn=band_rows)
        for band, (band_rows, keys) in enumerate(per_band)
    ]
    del per_band
    plan = plan_tasks(runs, m, TASK_ROWS)  # groups of records linked by any bucket, packed into join tasks
    task_of, local_of, tasks = plan.task_of, plan.local_of, plan.tasks
    exact_known = exact_without_count(runs, config)
    del runs
    starts = np.array([s.first_row for s in shards], dtype=np.int64)
    owner = np.searchsorted(starts, needed, side="right") - 1
    wanted = [
        FileRows(s, needed[owner == s.index], task_of[owner == s.index], local_of[owner == s.index]) for s in shards
    ]
    clock["groups"] = time.monotonic()
    rss["groups"] = round(peak_rss_mb())
    log(
        f"near_dup: {m:,} records share an LSH bucket, in {tasks} join tasks ({clock['groups'] - clock['start']:.1f} s)"
    )
    read = functools.partial(_read_rows, config, str(workdir), tasks)
    join = functools.partial(_join, config, prefix)
    if exact_known:  # step 3 cannot pass the limit: every bucket is completed
        exact = True
    else:  # the count pass: what step 3 would complete in all
        with progress("near_dup: count", total=tasks) as bar:
            count = executor.shuffle(
                read, wanted, join, partitions=tasks, stage="near_dup:count",
                partition_data=[JoinTask(r, None) for r in plan.runs],
            )  # fmt: skip
            counted = 0
            for done in count:
                counted += done["result"].completion_pairs
                bar.advance(1)
        exact = counted <= config.completion_limit
    clock["count"] = time.monotonic()
    out = workdir / "clusters.parquet"
    partial = out.with_name(out.name + ".tmp")
    sums = dict.fromkeys(("clusters", "clustered", "empty", "completion_pairs", "buckets_sampled"), 0)
    results: list[TaskResult] = []
    with progress("near_dup: join", total=tasks) as bar, pq.ParquetWriter(partial, CLUSTER_SCHEMA) as writer:
        joined = executor.shuffle(
            read, wanted, join, partitions=tasks, stage="near_dup:join",
            partition_data=[JoinTask(r, exact) for r in plan.runs],
        )  # fmt: skip
        for done in joined:
            writer.write_table(done["table"])
            result: TaskResult = done["result"]
            sums["clusters"] += done["clusters"]
            sums["clustered"] += done["table"].num_rows
            sums["empty"] += done["empty"]
            sums["completion_pairs"] += result.completion_pairs
            sums["buckets_sampled"] += result.buckets_sampled
            results.append(result)
            bar.advance(1)
    os.replace(partial, out)
    if not keep_signatures:
        shutil.rmtree(workdir / "signatures", ignore_errors=True)
    clock["join"] = time.monotonic()
    rss["join"] = round(peak_rss_mb())
    counts = sum_counts(results)
    names = ("bands", "groups", "count", "join")
    previous = ["start", *names[:-1]]
    stats = {
        "partitions": partitions,
        "join_tasks": tasks,
        "stage_seconds": {k: round(clock[k] - clock[p], 3) for k, p in zip(names, previous, strict=True)},
        "driver_peak_rss_mb": rss,  # the driver's peak RSS at the end of each stage
        "candidate_pairs": counts["candidates"],
        "jaccard_computed": counts["verified"],
        "joined_pairs": counts["joined"],
        "prefiltered_pairs": counts["prefiltered"],
        "completion_pairs": sums["completion_pairs"],
        "exact": int(exact),
        "buckets_sampled": sums["buckets_sampled"],
    }
    return FileNearDupResult(total, sums["clusters"], sums["clustered"], sums["empty"], m, out, stats)
