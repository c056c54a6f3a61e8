"""MinHash signatures stored in the catalog, per record and parameter set, so rescans sketch only new records.

A signature is a pure function of the record's text in one scope (records are content-addressed, so of the
record id) and of the sketch parameters; ``params_hash`` names both. Signatures are written in chunks, each in
its own short transaction, and only for records that have none: a scan killed half-way leaves whole chunks
behind, and the rerun sketches the rest without writing any row twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curation.similarity.minhash import MinHasher, MinHashParams, Sketches, from_bytes
from curation.similarity.shingles import ShingleBatch
from schemas.catalog import Catalog, utcnow
from schemas.ids import canonical_json, sha256_text

if TYPE_CHECKING:
    from curation.executors import Executor

WRITE_CHUNK = 50_000  # records per write transaction
READ_CHUNK = 65_536  # signatures read from the catalog at a time


def params_hash(params: MinHashParams, scope: str) -> str:
    return "mh_" + sha256_text(canonical_json({"scope": scope, **params.identity()}))[:16]


@dataclass(frozen=True)
class SignatureLookup:
    sketches: Sketches  # aligned with the requested record ids
    sketched: int  # records sketched in this call
    reused: int  # records whose signature came from the catalog


def load_signatures(
    catalog: Catalog, key: str, record_ids: Sequence[str], num_perm: int
) -> tuple[np.ndarray, Sketches]:
    """(found mask, sketches) for ``record_ids``; rows not found are zero."""
    n = len(record_ids)
    found = np.zeros(n, dtype=bool)
    signatures = np.zeros((n, num_perm), dtype=np.uint32)
    n_shingles = np.zeros(n, dtype=np.int64)
    wanted = pa.table({"record_id": list(record_ids), "pos": np.arange(n, dtype=np.int64)})
    with catalog.read() as con:
        con.register("wanted_ids", wanted)
        reader = con.sql(
            "SELECT w.pos, s.n_shingles, s.signature FROM wanted_ids w JOIN minhash_signatures s "
            "ON s.record_id = w.record_id AND s.params_hash = $key",
            params={"key": key},
        ).to_arrow_reader(READ_CHUNK)
        for batch in reader:  # a batch at a time: every blob at once as Arrow and as bytes was 1 GB at 1M records
            pos = batch.column("pos").to_numpy()
            found[pos] = True
            n_shingles[pos] = batch.column("n_shingles").to_numpy()
            signatures[pos] = from_bytes(batch.column("signature").to_pylist(), num_perm)
        con.unregister("wanted_ids")
    return found, Sketches(signatures, n_shingles)


def save_signatures(
    catalog: Catalog, key: str, params: MinHashParams, scope: str, record_ids: Sequence[str], sketches: Sketches
) -> None:
    """Insert signatures for records that have none under ``key`` (one transaction)."""
    blobs = sketches.signatures.astype("<u4", copy=False).view(np.uint8).reshape(len(record_ids), -1)
    table = pa.table(
        {
            "params_hash": [key] * len(record_ids),
            "record_id": list(record_ids),
            "n_shingles": sketches.n_shingles.astype(np.int64),
            "signature": [row.tobytes() for row in blobs],
        }
    )
    with catalog.write() as con:
        con.execute(
            "INSERT OR IGNORE INTO minhash_params VALUES (?, ?, ?)",
            [key, canonical_json({"scope": scope, **params.identity()}), utcnow()],
        )
        con.register("new_signatures", table)
        con.execute(
            "INSERT INTO minhash_signatures SELECT n.* FROM new_signatures n "
            "ANTI JOIN minhash_signatures s ON s.params_hash = n.params_hash AND s.record_id = n.record_id"
        )
        con.unregister("new_signatures")


def _forward(
    on_shingles: Callable[[np.ndarray, ShingleBatch], Any], chunk: np.ndarray, lo: int, hi: int, batch: ShingleBatch
) -> None:
    on_shingles(chunk[lo:hi], batch)


def signatures_for(
    catalog: Catalog | None,
    record_ids: Sequence[str],
    texts: Sequence[str],
    params: MinHashParams,
    scope: str,
    on_chunk: Callable[[int], Any] | None = None,
    on_shingles: Callable[[np.ndarray, ShingleBatch], Any] | None = None,
    store: bool = True,
    executor: Executor | None = None,
    stage: str = "sketch",
) -> SignatureLookup:
    """Signatures for every record: stored ones reused, missing ones sketched (and stored, when a catalog and
    ``store``: a reader such as a snapshot passes ``store=False`` and leaves the catalog as it found it).

    ``on_shingles(positions, batch)`` sees the shingles of the records sketched here (``positions`` index
    ``record_ids``), so a caller can keep their sets instead of shingling the texts again.

    With a distributed ``executor`` (Ray), the missing records are sketched there in shards, as the stage ``stage``,
    and ``on_shingles`` sees nothing (the sets stay on the workers; verification shingles the few texts it needs).
    A signature is a pure function of the text, so where it was computed changes no bit of it.
    """
    hasher = MinHasher(params)
    distributed = executor if executor is not None and executor.kind != "local" else None
    if catalog is None and distributed is not None and len(texts):
        sketches = Sketches(
            np.zeros((len(texts), params.num_perm), dtype=np.uint32), np.zeros(len(texts), dtype=np.int64)
        )
        everything = np.arange(len(texts))
        _sketch_distributed(
            None, "", params, scope, record_ids, texts, everything, sketches, distributed, stage, on_chunk
        )
        return SignatureLookup(sketches, len(texts), 0)
    if catalog is None:
        hook = None if on_shingles is None else lambda lo, hi, batch: on_shingles(np.arange(lo, hi), batch)
        return SignatureLookup(hasher.sketch(texts, on_batch=hook), len(texts), 0)
    key = params_hash(params, scope)
    found, sketches = load_signatures(catalog, key, record_ids, params.num_perm)
    missing = np.flatnonzero(~found)
    if distributed is not None and len(missing):
        _sketch_distributed(catalog if store else None, key, params, scope, record_ids, texts, missing, sketches,
                            distributed, stage, on_chunk)  # fmt: skip
        return SignatureLookup(sketches, len(missing), int(found.sum()))
    for lo in range(0, len(missing), WRITE_CHUNK):
        chunk = missing[lo : lo + WRITE_CHUNK]
        hook = None
        if on_shingles is not None:
            hook = functools.partial(_forward, on_shingles, chunk)
        new = hasher.sketch([texts[i] for i in chunk.tolist()], on_batch=hook)
        sketches.signatures[chunk] = new.signatures
        sketches.n_shingles[chunk] = new.n_shingles
        if store:
            save_signatures(catalog, key, params, scope, [record_ids[i] for i in chunk], new)
        if on_chunk is not None:
            on_chunk(len(chunk))
    return SignatureLookup(sketches, len(missing), int(found.sum()))


def sketch_shard(params: MinHashParams, texts: list[str]) -> Sketches:
    """One shard's signatures (what a worker runs)."""
    return MinHasher(params).sketch(texts)


def _sketch_distributed(
    catalog: Catalog | None,
    key: str,
    params: MinHashParams,
    scope: str,
    record_ids: Sequence[str],
    texts: Sequence[str],
    missing: np.ndarray,
    sketches: Sketches,
    executor: Executor,
    stage: str,
    on_chunk: Callable[[int], Any] | None,
) -> None:
    """Sketch ``missing`` on the executor in shards of its ``shard_records``; each shard is stored as it returns."""
    size = executor.shard_records
    parts = [missing[lo : lo + size] for lo in range(0, len(missing), size)]
    shards = [[texts[i] for i in part.tolist()] for part in parts]
    task = functools.partial(sketch_shard, params)
    for part, new in zip(parts, executor.map(task, shards, stage=stage), strict=True):
        sketches.signatures[part] = new.signatures
        sketches.n_shingles[part] = new.n_shingles
        if catalog is not None:
            save_signatures(catalog, key, params, scope, [record_ids[i] for i in part.tolist()], new)
        if on_chunk is not None:
            on_chunk(len(part))
