"""New versions of records (a review edit, a relabel by policy) written through the ingest store: one batch per set
of versions, so each new version is an ordinary record with a source row and lineage back to where it came from."""

from __future__ import annotations

from typing import Any

from curation.ingest.store import BatchStore, Chunk
from schemas.catalog import Catalog
from schemas.ids import artifact_id
from schemas.records import BatchPurpose, IngestBatch, Record


def write_versions(
    catalog: Catalog, versions: dict[str, Record], *, key: dict[str, Any], name: str, fmt: str, source: str
) -> dict[str, str]:
    """Store ``versions`` (original record id -> its new version) as one ingest batch named ``name`` whose id hashes
    ``key`` and the pairs (rerunning is free); return original -> new record id."""
    if not versions:
        return {}
    pairs = sorted((orig, rec.record_id) for orig, rec in versions.items())
    files = [{"path": source, **key, "records": len(pairs)}]
    batch_id = artifact_id("batch", {**key, "edits": pairs})
    store = BatchStore(catalog, batch_id)
    batch = IngestBatch(
        batch_id=batch_id, name=name, purpose=BatchPurpose.TRAIN, format=fmt, files=[source],
        config={**key, "edits": len(pairs)},
    )  # fmt: skip
    if store.begin(batch, files) is None:
        chunk = Chunk(file=source, format=fmt)
        for row, (orig, _) in enumerate(pairs, start=1):
            chunk.add_record(row, 0, versions[orig])
        store.write_chunk(chunk)
        store.finish(rows_read=len(pairs), ingested=len(pairs), quarantined=0, files=files)
    return dict(pairs)
