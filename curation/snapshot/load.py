"""Reading a frozen snapshot back: its files verified against its manifest and the catalog's copy of the manifest
hash, then one split at a time as rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from curation.snapshot.policy import SPLITS, SnapshotError
from schemas.artifact_paths import resolve_stored, workspace_root
from schemas.catalog import Catalog
from schemas.manifest import Manifest, load_manifest, manifest_sha256


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    path: Path
    manifest: Manifest

    def read_split(self, split: str) -> list[dict[str, Any]]:
        """Rows of one split: record_id, messages (list of role/content dicts), label, metadata_json, and
        original_record_id (the record an edited version replaces; None otherwise)."""
        if split not in SPLITS:
            raise SnapshotError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        return pq.read_table(self.path / f"{split}.parquet").to_pylist()


def load_snapshot(catalog: Catalog, snapshot_id: str, verify: bool = True) -> Snapshot:
    """The snapshot's files, verified against its manifest and the catalog's copy of the manifest hash."""
    row = catalog.query("SELECT path, manifest_sha256 FROM snapshots WHERE snapshot_id = ?", [snapshot_id])
    if not row:
        raise SnapshotError(f"no snapshot {snapshot_id} in the catalog (see `refinery snapshot list`)")
    path = resolve_stored(row[0]["path"], workspace_root(catalog))
    manifest = load_manifest(path, verify=verify)
    if verify and manifest_sha256(path) != row[0]["manifest_sha256"]:
        raise SnapshotError(f"{path}/manifest.json differs from the catalog's record of it")
    return Snapshot(snapshot_id, path, manifest)
