"""Snapshots: the approved, de-duplicated training records frozen as Parquet splits plus a manifest.

Which records: every record with a training source row that is not in a registered eval set and is not a
removed member of a duplicate cluster in the latest scan. Splits: a record's split is a pure function of its
group key and the seed (records sharing a normalised prompt share a group), so adding data never moves an
existing record to another split and no prompt spans two splits.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, model_validator

from schemas.atomic import atomic_directory, clean_staging
from schemas.catalog import Catalog, add_lineage_edge, utcnow
from schemas.ids import artifact_id, canonical_json, sha256_text
from schemas.manifest import Manifest, load_manifest, manifest_sha256, new_manifest, write_manifest

SPLITS = ("train", "validation", "test")


class SnapshotError(Exception):
    """A snapshot cannot be made or loaded."""


class SnapshotPolicy(BaseModel):
    """What goes into a snapshot and how it is split."""

    train_fraction: float = Field(0.8, gt=0, le=1, description="Share of groups in the train split.")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="Share of groups in validation.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of groups in test.")
    seed: int = Field(0, description="Changes every split assignment; keep it fixed across versions.")
    exclude_duplicates: list[str] = Field(
        default_factory=lambda: ["exact", "near_dup"],
        description="Duplicate checks whose removed (non-kept) members are left out.",
    )
    group_by: str | None = Field(
        "exact_prompt", description="Duplicate check whose clusters must stay within one split."
    )

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SnapshotPolicy:
        total = self.train_fraction + self.validation_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self


@dataclass(frozen=True)
class SnapshotResult:
    snapshot_id: str
    path: Path
    counts: dict[str, int]
    scan_id: str
    reused: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "path": str(self.path),
            **self.counts,
            "scan_id": self.scan_id,
            "reused": self.reused,
        }


def split_of(group_key: str, policy: SnapshotPolicy) -> str:
    digest = hashlib.sha256(f"{policy.seed}:{group_key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    if bucket < policy.train_fraction:
        return "train"
    if bucket < policy.train_fraction + policy.validation_fraction:
        return "validation"
    return "test"


def _latest_scan(catalog: Catalog) -> str:
    scan_id = catalog.scalar("SELECT scan_id FROM latest_scan")
    if scan_id is None:
        raise SnapshotError("no completed scan: run `refinery scan` before `refinery snapshot create`")
    return str(scan_id)


def _candidates(catalog: Catalog, scan_id: str, policy: SnapshotPolicy) -> list[tuple[Any, ...]]:
    excluded = policy.exclude_duplicates or ["__none__"]
    marks = ",".join("?" for _ in excluded)
    sql = f"""
        WITH train_records AS (
            SELECT DISTINCT s.record_id FROM source_rows s JOIN ingest_batches b USING (batch_id)
            WHERE b.purpose = 'train'
        ), eval_records AS (
            SELECT DISTINCT s.record_id FROM source_rows s JOIN ingest_batches b USING (batch_id)
            WHERE b.purpose = 'eval'
        ), removed AS (
            SELECT DISTINCT record_id FROM duplicate_members
            WHERE scan_id = ? AND NOT is_kept AND check_name IN ({marks})
        ), scanned AS (
            SELECT DISTINCT record_id FROM findings WHERE scan_id = ?
        ), grouping AS (
            SELECT record_id, cluster_id FROM duplicate_members WHERE scan_id = ? AND check_name = ?
        )
        SELECT r.record_id, r.messages_json, r.label, r.metadata_json, g.cluster_id,
               (r.record_id IN (SELECT record_id FROM scanned)) AS was_scanned,
               (r.record_id IN (SELECT record_id FROM eval_records)) AS in_eval,
               (r.record_id IN (SELECT record_id FROM removed)) AS is_removed
        FROM records r JOIN train_records USING (record_id) LEFT JOIN grouping g USING (record_id)
        ORDER BY r.record_id
    """
    params = [scan_id, *excluded, scan_id, scan_id, policy.group_by or "__none__"]
    with catalog.read() as con:
        return con.execute(sql, params).fetchall()


def create_snapshot(
    catalog: Catalog, snapshots_dir: Path, policy: SnapshotPolicy | None = None, parent: str | None = None
) -> SnapshotResult:
    policy = policy or SnapshotPolicy()
    scan_id = _latest_scan(catalog)
    if parent is not None and catalog.scalar("SELECT 1 FROM snapshots WHERE snapshot_id = ?", [parent]) is None:
        raise SnapshotError(f"parent snapshot {parent} is not in the catalog")
    rows = _candidates(catalog, scan_id, policy)
    unscanned = sum(1 for row in rows if not row[5])
    if unscanned:
        raise SnapshotError(
            f"{unscanned} training record(s) were ingested after scan {scan_id}: run `refinery scan` again"
        )
    members: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    excluded = Counter[str]()
    for rid, messages_json, label, metadata_json, cluster_id, _, in_eval, is_removed in rows:
        if in_eval:
            excluded["in_eval_set"] += 1
            continue
        if is_removed:
            excluded["duplicate"] += 1
            continue
        split = split_of(cluster_id or rid, policy)
        members[split].append(
            {
                "record_id": rid,
                "messages": json.loads(messages_json),
                "label": label,
                "metadata_json": metadata_json,
            }
        )
    membership = "\n".join(f"{m['record_id']}\t{s}" for s in SPLITS for m in members[s])
    snapshot_id = artifact_id(
        "snapshot", {"members": sha256_text(membership), "policy": policy.model_dump(), "parent": parent}
    )
    counts = {s: len(members[s]) for s in SPLITS}
    if counts["train"] == 0:
        raise SnapshotError("the snapshot would have no training records")
    final = snapshots_dir / snapshot_id
    clean_staging(snapshots_dir)
    reused = final.exists()
    if not reused:
        batches = _contributing_batches(catalog, [m["record_id"] for s in SPLITS for m in members[s]])
        with atomic_directory(final) as staging:
            for split in SPLITS:
                _write_split(staging / f"{split}.parquet", members[split])
            labels = {s: dict(sorted(Counter(str(m["label"]) for m in members[s]).items())) for s in SPLITS}
            manifest = new_manifest(
                "snapshot",
                snapshot_id,
                parents=[p for p in [parent, scan_id, *batches] if p],
                config={"policy": policy.model_dump()},
                counts={**counts, **{f"excluded_{k}": v for k, v in excluded.items()}},
                extra={"scan_id": scan_id, "parent": parent, "labels": labels, "batches": batches},
            )
            write_manifest(staging, manifest)
    manifest = load_manifest(final)
    _register(catalog, manifest, final, members, policy, parent, scan_id)
    return SnapshotResult(snapshot_id, final, counts, scan_id, reused)


def _contributing_batches(catalog: Catalog, record_ids: list[str]) -> list[str]:
    """Training ingest batches that hold a source row of any snapshot member."""
    ids = pa.table({"record_id": record_ids})
    with catalog.read() as con:
        con.register("member_ids", ids)
        rows = con.execute(
            "SELECT DISTINCT s.batch_id FROM source_rows s JOIN ingest_batches b USING (batch_id) "
            "JOIN member_ids USING (record_id) WHERE b.purpose = 'train' ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]


_SPLIT_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("label", pa.string()),
        ("metadata_json", pa.string()),
    ]
)


def _write_split(path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=_SPLIT_SCHEMA)
    pq.write_table(table, path, compression="zstd")


def _register(
    catalog: Catalog,
    manifest: Manifest,
    path: Path,
    members: dict[str, list[dict[str, Any]]],
    policy: SnapshotPolicy,
    parent: str | None,
    scan_id: str,
) -> None:
    sid = manifest.id
    with catalog.write() as con:
        if con.execute("SELECT 1 FROM snapshots WHERE snapshot_id = ?", [sid]).fetchone():
            return
        con.execute(
            "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                sid,
                parent,
                scan_id,
                str(path),
                manifest_sha256(path),
                canonical_json(policy.model_dump()),
                manifest.counts["train"],
                manifest.counts["validation"],
                manifest.counts["test"],
                utcnow(),
            ],
        )
        table = pa.table(
            {
                "snapshot_id": [sid] * sum(len(v) for v in members.values()),
                "record_id": [m["record_id"] for s in SPLITS for m in members[s]],
                "split": [s for s in SPLITS for _ in members[s]],
            }
        )
        con.register("members_chunk", table)
        con.execute("INSERT INTO snapshot_members SELECT * FROM members_chunk")
        con.unregister("members_chunk")
        add_lineage_edge(con, sid, "snapshot", scan_id, "scan", "deduplicated_by")
        if parent:
            add_lineage_edge(con, sid, "snapshot", parent, "snapshot", "parent")
        for batch_id in manifest.extra.get("batches", []):
            add_lineage_edge(con, sid, "snapshot", batch_id, "batch", "contains_rows_of")


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    path: Path
    manifest: Manifest

    def read_split(self, split: str) -> list[dict[str, Any]]:
        """Rows of one split: record_id, messages (list of role/content dicts), label, metadata_json."""
        if split not in SPLITS:
            raise SnapshotError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        return pq.read_table(self.path / f"{split}.parquet").to_pylist()


def load_snapshot(catalog: Catalog, snapshot_id: str, verify: bool = True) -> Snapshot:
    """The snapshot's files, verified against its manifest and the catalog's copy of the manifest hash."""
    row = catalog.query("SELECT path, manifest_sha256 FROM snapshots WHERE snapshot_id = ?", [snapshot_id])
    if not row:
        raise SnapshotError(f"no snapshot {snapshot_id} in the catalog (see `refinery snapshot list`)")
    path = Path(row[0]["path"])
    manifest = load_manifest(path, verify=verify)
    if verify and manifest_sha256(path) != row[0]["manifest_sha256"]:
        raise SnapshotError(f"{path}/manifest.json differs from the catalog's record of it")
    return Snapshot(snapshot_id, path, manifest)
