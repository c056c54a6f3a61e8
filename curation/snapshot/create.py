"""Making a snapshot: select, check, write and register it (or reuse the identical one).

The snapshot's id hashes its members (with their splits), its exclusions, its policy and its parent, so the same
inputs give the same snapshot. The folder is written atomically (Parquet per split plus a manifest) and
registered in one catalog transaction, so a killed run leaves no snapshot or a complete folder, which the next
run registers (tests/curation/test_snapshot_kill.py kills a real process at five points).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.snapshot.contamination import check_eval_contamination
from curation.snapshot.policy import SPLITS, SnapshotError, SnapshotPolicy
from curation.snapshot.select import Exclusion, Member, Selection, latest_scan, select_records
from schemas.artifact_paths import to_stored, workspace_root
from schemas.atomic import atomic_directory, clean_staging
from schemas.catalog import Catalog, add_lineage_edge, utcnow
from schemas.ids import artifact_id, canonical_json, sha256_text
from schemas.manifest import Manifest, load_manifest, manifest_sha256, new_manifest, write_manifest
from schemas.progress import progress


@dataclass(frozen=True)
class SnapshotResult:
    snapshot_id: str
    path: Path
    counts: dict[str, int]
    scan_id: str
    reused: bool
    excluded: dict[str, int] = field(default_factory=dict)
    contaminated_eval_items: int = 0
    check_effects: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "path": str(self.path),
            **self.counts,
            "excluded": self.excluded,
            "check_effects": self.check_effects,
            "contaminated_eval_items": self.contaminated_eval_items,
            "scan_id": self.scan_id,
            "reused": self.reused,
        }


def create_snapshot(
    catalog: Catalog, snapshots_dir: Path, policy: SnapshotPolicy | None = None, parent: str | None = None
) -> SnapshotResult:
    """Select, split, check, write and register a snapshot (or reuse the identical one)."""
    policy = policy or SnapshotPolicy()
    scan_id = latest_scan(catalog)
    if parent is not None and catalog.scalar("SELECT 1 FROM snapshots WHERE snapshot_id = ?", [parent]) is None:
        raise SnapshotError(f"parent snapshot {parent} is not in the catalog")
    with progress("snapshot", total=4) as bar:
        bar.set_description("snapshot: selecting records")
        selection = select_records(catalog, scan_id, policy)
        members = selection.all_members()
        counts = {s: len(selection.members[s]) for s in SPLITS}
        if counts["train"] == 0:
            raise SnapshotError("the snapshot would have no training records")
        bar.advance()
        bar.set_description("snapshot: eval-set contamination")
        contamination, contamination_summary = check_eval_contamination(catalog, selection.members["train"], policy)
        bar.advance()
        membership = "\n".join(f"{m.record_id}\t{m.split}\t{m.original_record_id or ''}" for m in members)
        exclusions = "\n".join(f"{e.record_id}\t{e.reason}" for e in sorted(selection.exclusions, key=_key))
        snapshot_id = artifact_id(
            "snapshot",
            {
                "members": sha256_text(membership),
                "exclusions": sha256_text(exclusions),
                "policy": policy.model_dump(),
                "parent": parent,
            },
        )
        excluded = dict(sorted(Counter(e.reason for e in selection.exclusions).items()))
        effects = selection.check_effects()
        final = snapshots_dir / snapshot_id
        clean_staging(snapshots_dir)
        reused = final.exists()
        bar.set_description("snapshot: writing splits")
        batches = _contributing_batches(catalog, [m.original_record_id or m.record_id for m in members])
        if not reused:
            with atomic_directory(final) as staging:
                for split in SPLITS:
                    write_split(staging / f"{split}.parquet", selection.members[split])
                manifest = _manifest(
                    snapshot_id, policy, parent, scan_id, batches, selection, counts, excluded, effects,
                    contamination_summary, contamination,
                )  # fmt: skip
                write_manifest(staging, manifest)
        bar.advance()
        bar.set_description("snapshot: registering")
        manifest = load_manifest(final)
        if manifest.id != snapshot_id:
            raise SnapshotError(f"{final}/manifest.json names {manifest.id}, not {snapshot_id}")
        _register(catalog, manifest, final, selection, contamination, policy, parent, scan_id)
        bar.advance()
    return SnapshotResult(
        snapshot_id,
        final,
        counts,
        scan_id,
        reused,
        excluded,
        contamination_summary["contaminated_eval_items"],
        effects,
    )


def _key(exclusion: Exclusion) -> str:
    return exclusion.record_id


def _manifest(
    snapshot_id: str,
    policy: SnapshotPolicy,
    parent: str | None,
    scan_id: str,
    batches: list[str],
    selection: Selection,
    counts: dict[str, int],
    excluded: dict[str, int],
    effects: dict[str, dict[str, int]],
    contamination_summary: dict[str, Any],
    contamination: list[dict[str, Any]],
) -> Manifest:
    labels = {s: dict(sorted(Counter(str(m.label) for m in selection.members[s]).items())) for s in SPLITS}
    basis = dict(sorted(Counter(m.basis for m in selection.all_members()).items()))
    per_actor = Counter((d["round_name"], d["actor"], d["decision"], d["source"]) for d in selection.decisions)
    review = {
        "rounds": sorted({d["round_name"] for d in selection.decisions if d["round_name"]}),
        "decisions": [
            {"round_name": r, "actor": a, "decision": d, "source": s, "records": n}
            for (r, a, d, s), n in sorted(per_actor.items(), key=lambda kv: tuple(str(x) for x in kv[0]))
        ],
        "decisions_sha256": sha256_text(canonical_json(selection.decisions)),
    }
    return new_manifest(
        "snapshot",
        snapshot_id,
        parents=[p for p in [parent, scan_id, *batches] if p],
        config={"policy": policy.model_dump()},
        counts={**counts, **{f"excluded_{k}": v for k, v in excluded.items()}},
        extra={
            "scan_id": scan_id,
            "parent": parent,
            "labels": labels,
            "basis": basis,
            "batches": batches,
            "review": review,
            "check_effects": effects,
            "contamination": {**contamination_summary, "matches": contamination},
        },
    )


def _contributing_batches(catalog: Catalog, record_ids: list[str]) -> list[str]:
    """Training ingest batches that hold a source row of any snapshot member (of its original, for edits)."""
    ids = pa.table({"record_id": pa.array(record_ids, pa.string())})
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
        ("original_record_id", pa.string()),
    ]
)


def write_split(path: Path, rows: list[Member]) -> None:
    table = pa.Table.from_pylist(
        [
            {"record_id": m.record_id, "messages": m.messages, "label": m.label, "metadata_json": m.metadata_json,
             "original_record_id": m.original_record_id}
            for m in rows
        ],
        schema=_SPLIT_SCHEMA,
    )  # fmt: skip
    pq.write_table(table, path, compression="zstd")


def _register(
    catalog: Catalog,
    manifest: Manifest,
    path: Path,
    selection: Selection,
    contamination: list[dict[str, Any]],
    policy: SnapshotPolicy,
    parent: str | None,
    scan_id: str,
) -> None:
    """One transaction: the snapshot row, its members, exclusions, contamination and lineage edges."""
    sid = manifest.id
    members = selection.all_members()
    causes = [(e.record_id, c) for e in selection.exclusions for c in e.causes]
    with catalog.write() as con:
        if con.execute("SELECT 1 FROM snapshots WHERE snapshot_id = ?", [sid]).fetchone():
            return
        con.execute(
            "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                sid,
                parent,
                scan_id,
                to_stored(path, workspace_root(catalog)),
                manifest_sha256(path),
                canonical_json(policy.model_dump()),
                manifest.counts["train"],
                manifest.counts["validation"],
                manifest.counts["test"],
                utcnow(),
            ],
        )
        tables = {
            "snapshot_members": pa.table(
                {
                    "snapshot_id": [sid] * len(members),
                    "record_id": [m.record_id for m in members],
                    "split": [m.split for m in members],
                    "basis": [m.basis for m in members],
                    "decision_id": pa.array([m.decision_id for m in members], pa.string()),
                    "original_record_id": pa.array([m.original_record_id for m in members], pa.string()),
                }
            ),
            "snapshot_exclusions": pa.table(
                {
                    "snapshot_id": [sid] * len(selection.exclusions),
                    "record_id": [e.record_id for e in selection.exclusions],
                    "reason": [e.reason for e in selection.exclusions],
                    "detail": [e.detail for e in selection.exclusions],
                    "decision_id": pa.array([e.decision_id for e in selection.exclusions], pa.string()),
                }
            ),
            "snapshot_exclusion_causes": pa.table(
                {
                    "snapshot_id": [sid] * len(causes),
                    "record_id": [rid for rid, _ in causes],
                    "check_name": [c.check_name for _, c in causes],
                    "scan_id": [scan_id] * len(causes),
                    "score": pa.array([c.score for _, c in causes], pa.float64()),
                    "kept_record_id": pa.array([c.kept_record_id for _, c in causes], pa.string()),
                }
            ),
            "snapshot_contamination": pa.table(
                {
                    "snapshot_id": [sid] * len(contamination),
                    **{
                        col: pa.array([r[col] for r in contamination], typ)
                        for col, typ in [("eval_set", pa.string()), ("eval_item", pa.string()),
                                         ("record_id", pa.string()), ("similarity", pa.float64()),
                                         ("scope", pa.string())]
                    },
                }
            ),
        }  # fmt: skip
        for table_name, table in tables.items():
            con.register("chunk", table)
            columns = ", ".join(table.column_names)
            con.execute(f"INSERT INTO {table_name} ({columns}) SELECT {columns} FROM chunk")
            con.unregister("chunk")
        add_lineage_edge(con, sid, "snapshot", scan_id, "scan", "deduplicated_by")
        if parent:
            add_lineage_edge(con, sid, "snapshot", parent, "snapshot", "parent")
        for batch_id in manifest.extra.get("batches", []):
            add_lineage_edge(con, sid, "snapshot", batch_id, "batch", "contains_rows_of")
        for round_name in manifest.extra.get("review", {}).get("rounds", []):
            add_lineage_edge(con, sid, "snapshot", round_name, "review_round", "reviewed_in")
