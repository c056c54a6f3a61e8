"""Snapshots: the approved, de-duplicated training records frozen as Parquet splits plus a manifest.

Which records (the default policy; every rule is a :class:`SnapshotPolicy` field):

- candidates are the records with a training source row (an edited version enters only through its
  original's 'edit' decision, in its original's place);
- out, in this order of precedence: forgotten records (``refinery forget``, and every version derived from
  them), records that are also registered eval items, records whose latest review decision is 'reject',
  removed (non-kept) members of ``exact`` / ``near_dup`` clusters, and records flagged by a *blocking* check
  (the checks whose spec says ``blocks_snapshot``: empty_response, pii, near_dup_eval, contamination,
  inconsistency) or
  scoring at or above a configured threshold, unless a human approved (or edited) them;
- a human approval of a removed *near*-duplicate restores it (the reviewer judged it distinct); an exact
  duplicate stays out whatever the decision, since its kept member carries the same normalised text;
- every other check (exact_prompt, outlier, length, semantic_dup, repetitive, ...) is informative: its flags
  send records to review but do not hold them back by themselves.

Every excluded record is stored with its reason (``snapshot_exclusions``), every member with its basis
(``policy``, ``approved`` or ``edited``) and the review decision it relied on.

Splits: records are grouped (union of the clusters of the ``group_by`` checks: exact prompts and near-duplicate
clusters), so no cluster spans two splits. With ``stratify`` (default) the groups of each label are ordered by
a seeded hash and dealt to the split furthest below its share; without it a group's split is a pure function of
its key and the seed (adding data then never moves an existing record). Both are deterministic.

Registered eval sets are compared with the train split (near-duplicates, as ``near_dup_eval`` does) and the
result is stored in the manifest and the catalog. The folder is written atomically and registered in one
catalog transaction, so a killed run leaves no snapshot or a complete one; a rerun finishes the job.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, field_validator, model_validator

from curation.checks.registry import BLOCKING_CHECKS, DUPLICATE_CHECKS, SPLIT_GROUP_CHECKS
from curation.similarity.eval_match import ContaminationConfig, Reference, find_matches, load_eval_items
from curation.similarity.near_dup import Scope, scope_text
from curation.similarity.union_find import ArrayUnionFind
from schemas.atomic import atomic_directory, clean_staging
from schemas.catalog import Catalog, add_lineage_edge, utcnow
from schemas.ids import artifact_id, canonical_json, sha256_text
from schemas.manifest import Manifest, load_manifest, manifest_sha256, new_manifest, write_manifest
from schemas.progress import progress

SPLITS = ("train", "validation", "test")
#: Set to a stage name to make `create_snapshot` sleep there (crash tests kill the process at that point).
PAUSE_ENV = "REFINERY_SNAPSHOT_PAUSE_AT"
#: A file each stage name is appended to as it is reached (crash tests wait for it).
STAGE_LOG_ENV = "REFINERY_SNAPSHOT_STAGE_LOG"
STAGES = ("selected", "checked", "split_written", "staged", "renamed", "registering")


class SnapshotError(Exception):
    """A snapshot cannot be made or loaded."""


class SnapshotPolicy(BaseModel):
    """What goes into a snapshot and how it is split."""

    train_fraction: float = Field(0.8, gt=0, le=1, description="Share of records in the train split.")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="Share of records in validation.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of records in test.")
    seed: int = Field(0, description="Changes every split assignment; keep it fixed across versions.")
    exclude_duplicates: list[str] = Field(
        default_factory=lambda: list(DUPLICATE_CHECKS),
        description="Duplicate checks whose removed (non-kept) members are left out.",
    )
    group_by: list[str] = Field(
        default_factory=lambda: list(SPLIT_GROUP_CHECKS),
        description="Duplicate checks whose clusters must stay within one split.",
    )
    blocking_checks: list[str] = Field(
        default_factory=lambda: list(BLOCKING_CHECKS),
        description="Checks whose flag holds a record back unless a human approved it.",
    )
    score_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="check -> score: a finding at or above it holds the record back too (flagged or not).",
    )
    approval_restores_near_duplicates: bool = Field(
        True, description="A human approval brings back a removed near-duplicate (never an exact duplicate)."
    )
    stratify: bool = Field(True, description="Deal groups to splits per label (when records carry labels).")
    contamination_threshold: float = Field(0.6, gt=0, le=1, description="Eval-set check: minimum Jaccard.")
    contamination_scope: Literal["prompt", "response", "pair"] = Field(
        "prompt", description="Eval-set check: the text compared."
    )

    @field_validator("group_by", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SnapshotPolicy:
        total = self.train_fraction + self.validation_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self

    def fractions(self) -> dict[str, float]:
        return {"train": self.train_fraction, "validation": self.validation_fraction, "test": self.test_fraction}


@dataclass
class Member:
    """One record of a snapshot, with the basis of its inclusion."""

    record_id: str
    messages: list[dict[str, str]]
    label: str | None
    metadata_json: str
    group: str
    basis: str  # 'policy', 'approved', 'edited'
    decision_id: str | None = None
    original_record_id: str | None = None
    split: str = ""


@dataclass(frozen=True)
class Exclusion:
    record_id: str
    reason: str  # 'forgotten', 'in_eval_set', 'rejected', 'duplicate', 'held_back'
    detail: str
    decision_id: str | None = None


@dataclass
class Selection:
    """What the policy chose: members by split, exclusions, and the review decisions relied on."""

    members: dict[str, list[Member]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    exclusions: list[Exclusion] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def all_members(self) -> list[Member]:
        return [m for s in SPLITS for m in self.members[s]]


@dataclass(frozen=True)
class SnapshotResult:
    snapshot_id: str
    path: Path
    counts: dict[str, int]
    scan_id: str
    reused: bool
    excluded: dict[str, int] = field(default_factory=dict)
    contaminated_eval_items: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "path": str(self.path),
            **self.counts,
            "excluded": self.excluded,
            "contaminated_eval_items": self.contaminated_eval_items,
            "scan_id": self.scan_id,
            "reused": self.reused,
        }


def _stage(name: str) -> None:
    """Crash-test hook: log the stage reached, and sleep there when asked (see PAUSE_ENV)."""
    log_file = os.environ.get(STAGE_LOG_ENV)
    if log_file:
        with open(log_file, "a", encoding="utf-8") as handle:
            handle.write(name + "\n")
    if os.environ.get(PAUSE_ENV) == name:
        time.sleep(600)


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


def _latest_scan(catalog: Catalog) -> str:
    scan_id = catalog.scalar("SELECT scan_id FROM latest_scan")
    if scan_id is None:
        raise SnapshotError("no completed scan: run `refinery scan` before `refinery snapshot create`")
    return str(scan_id)


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


def _fetch(catalog: Catalog, scan_id: str, policy: SnapshotPolicy) -> dict[str, Any]:
    """Everything the policy looks at, in one read transaction."""
    blocking = sorted(set(policy.blocking_checks) | set(policy.score_thresholds))
    with catalog.read() as con:
        candidates = con.execute(
            """
            WITH train_records AS (
                SELECT DISTINCT s.record_id FROM source_rows s JOIN ingest_batches b USING (batch_id)
                WHERE b.purpose = 'train'
            )
            SELECT r.record_id, r.messages_json, r.label, r.metadata_json,
                   r.record_id IN (SELECT record_id FROM findings WHERE scan_id = ?) AS was_scanned,
                   r.record_id IN (SELECT record_id FROM eval_items) AS in_eval
            FROM records r JOIN train_records USING (record_id)
            WHERE r.record_id NOT IN (SELECT record_id FROM record_versions)
            ORDER BY r.record_id
            """,
            [scan_id],
        ).fetchall()
        removed = con.execute(
            "SELECT record_id, check_name, kept_record_id FROM duplicate_members "
            "WHERE scan_id = ? AND NOT is_kept AND list_contains(?, check_name) ORDER BY check_name",
            [scan_id, policy.exclude_duplicates],
        ).fetchall()
        findings = con.execute(
            "SELECT record_id, check_name, score, flagged FROM findings "
            "WHERE scan_id = ? AND list_contains(?, check_name) ORDER BY record_id, check_name",
            [scan_id, blocking],
        ).fetchall()
        clusters = con.execute(
            "SELECT check_name, cluster_id, record_id FROM duplicate_members "
            "WHERE scan_id = ? AND list_contains(?, check_name)",
            [scan_id, policy.group_by],
        ).fetchall()
        decisions = con.execute(
            "SELECT decision_id, record_id, decision, edited_record_id, actor, round_name, source FROM record_decisions"
        ).fetchall()
        forgotten = con.execute(
            "SELECT record_id, min(forget_id), min(reason) FROM forgotten_records GROUP BY record_id"
        ).fetchall()
        edited_ids = sorted({d[3] for d in decisions if d[2] == "edit" and d[3]})
        edited = con.execute(
            "SELECT record_id, messages_json, label, metadata_json FROM records WHERE list_contains(?, record_id)",
            [edited_ids],
        ).fetchall()
    return {
        "candidates": candidates,
        "removed": removed,
        "findings": findings,
        "clusters": clusters,
        "decisions": decisions,
        "forgotten": forgotten,
        "edited": {row[0]: row for row in edited},
        "edited_ids": edited_ids,
    }


def select_records(catalog: Catalog, scan_id: str, policy: SnapshotPolicy) -> Selection:
    """Apply the policy to the catalog (see the module docstring); assign splits."""
    data = _fetch(catalog, scan_id, policy)
    unscanned = sum(1 for row in data["candidates"] if not row[4])
    if unscanned:
        raise SnapshotError(
            f"{unscanned} training record(s) were ingested after scan {scan_id}: run `refinery scan` again"
        )
    missing_edits = sorted(set(data["edited_ids"]) - set(data["edited"]))
    if missing_edits:
        raise SnapshotError(f"edit decision(s) point at record(s) not in the catalog: {', '.join(missing_edits[:5])}")
    removed: dict[str, tuple[str, str]] = {}
    for rid, check, kept in data["removed"]:
        if rid not in removed or check == "exact":  # an exact duplicate is the stronger statement
            removed[rid] = (check, kept)
    blocks: dict[str, list[str]] = defaultdict(list)
    for rid, check, score, flagged in data["findings"]:
        threshold = policy.score_thresholds.get(check)
        if (flagged and check in policy.blocking_checks) or (threshold is not None and score >= threshold):
            blocks[rid].append(f"{check} ({score:.3g})")
    decision_of = {d[1]: d for d in data["decisions"]}
    forgotten = {rid: (fid, reason) for rid, fid, reason in data["forgotten"]}

    selection = Selection()
    chosen: list[Member] = []
    used_decisions: dict[str, tuple[Any, ...]] = {}
    for rid, messages_json, label, metadata_json, _, in_eval in data["candidates"]:
        decision = decision_of.get(rid)
        did = decision[0] if decision else None
        human = decision is not None and decision[6] != "policy"
        approved = human and decision is not None and decision[2] in ("approve", "edit")
        if decision is not None:
            used_decisions[decision[0]] = decision
        exclusion: Exclusion | None = None
        if rid in forgotten:
            fid, reason = forgotten[rid]
            exclusion = Exclusion(rid, "forgotten", f"{fid}: {reason or 'no reason given'}")
        elif in_eval:
            exclusion = Exclusion(rid, "in_eval_set", "also a registered eval item")
        elif decision is not None and decision[2] == "reject":
            exclusion = Exclusion(rid, "rejected", f"rejected by {decision[4]} ({decision[5] or decision[6]})", did)
        elif rid in removed:
            check, kept = removed[rid]
            if not (approved and policy.approval_restores_near_duplicates and check != "exact"):
                exclusion = Exclusion(rid, "duplicate", f"{check} duplicate of {kept}")
        elif blocks.get(rid) and not approved:
            exclusion = Exclusion(rid, "held_back", "flagged by " + ", ".join(blocks[rid]) + ", not approved")
        if exclusion is None and decision is not None and decision[2] == "edit":
            new_id = decision[3]
            if new_id in forgotten:
                exclusion = Exclusion(rid, "forgotten", f"its edited version {new_id} is forgotten", did)
            else:
                _, messages_json, label, metadata_json = data["edited"][new_id]
                # the edited version takes its original's place, group included
                chosen.append(Member(new_id, json.loads(messages_json), label, metadata_json, rid, "edited", did, rid))
                continue
        if exclusion is not None:
            selection.exclusions.append(exclusion)
            continue
        basis = "approved" if approved else "policy"
        chosen.append(Member(rid, json.loads(messages_json), label, metadata_json, rid, basis, did))

    links = [(f"c:{check}:{cluster_id}", f"r:{rid}") for check, cluster_id, rid in data["clusters"]]
    roots = group_roots(links, [f"r:{m.group}" for m in chosen])
    for member in chosen:
        root = roots[f"r:{member.group}"]
        member.group = root[2:] if root.startswith("r:") else root.split(":", 2)[2]
    sizes: dict[str, list[str | None]] = defaultdict(list)
    for member in chosen:
        sizes[member.group].append(member.label)
    group_info = {key: (_majority(labels), len(labels)) for key, labels in sizes.items()}
    split_by_group = assign_splits(group_info, policy)
    for member in sorted(chosen, key=lambda m: m.record_id):
        member.split = split_by_group[member.group]
        selection.members[member.split].append(member)
    selection.decisions = [
        {"decision_id": d[0], "record_id": d[1], "decision": d[2], "actor": d[4], "round_name": d[5], "source": d[6]}
        for _, d in sorted(used_decisions.items())
    ]
    return selection


def _majority(labels: list[str | None]) -> str | None:
    counts = Counter(label for label in labels if label is not None)
    if not counts:
        return None
    return min(counts, key=lambda label: (-counts[label], label))


def check_eval_contamination(
    catalog: Catalog, train: list[Member], policy: SnapshotPolicy
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Registered eval items that nearly duplicate a train member (verified exact Jaccard), and a summary."""
    config = ContaminationConfig(threshold=policy.contamination_threshold, scope=policy.contamination_scope)
    items = load_eval_items(catalog, config.scope)
    summary: dict[str, Any] = {"scope": config.scope, "threshold": config.threshold, "eval_items": len(items)}
    if not items or not train:
        return [], {**summary, "contaminated_eval_items": 0, "eval_sets": len({i.group for i in items})}
    sets_of: dict[str, list[str]] = defaultdict(list)
    text_of: dict[str, str] = {}
    for item in items:
        sets_of[item.record_id].append(item.group)
        text_of[item.record_id] = item.text
    query_ids = sorted(text_of)
    references = [Reference(m.record_id, _member_text(m, config.scope), "train") for m in train]
    matches, _, _ = find_matches(
        catalog, query_ids, [text_of[i] for i in query_ids], references, config, store=False
    )  # a snapshot only reads the catalog's signatures: it writes none
    rows = [
        {"eval_set": eval_set, "eval_item": m.record_id, "record_id": m.matched_record_id,
         "similarity": round(m.similarity, 6), "scope": config.scope}
        for m in matches
        for eval_set in sets_of[m.record_id]
    ]  # fmt: skip
    summary.update(
        eval_sets=len({i.group for i in items}),
        contaminated_eval_items=len({(r["eval_set"], r["eval_item"]) for r in rows}),
        train_records=len({r["record_id"] for r in rows}),
    )
    return rows, summary


def _member_text(member: Member, scope: Scope) -> str:
    """The same prompt / response split as the catalog's columns: non-system text before the last assistant turn."""
    last = max((i for i, m in enumerate(member.messages) if m["role"] == "assistant"), default=len(member.messages))
    prompt = "\n".join(m["content"] for m in member.messages[:last] if m["role"] != "system")
    response = member.messages[last]["content"] if last < len(member.messages) else ""
    return scope_text(prompt, response, scope)


def create_snapshot(
    catalog: Catalog, snapshots_dir: Path, policy: SnapshotPolicy | None = None, parent: str | None = None
) -> SnapshotResult:
    """Select, split, check, write and register a snapshot (or reuse the identical one)."""
    policy = policy or SnapshotPolicy()
    scan_id = _latest_scan(catalog)
    if parent is not None and catalog.scalar("SELECT 1 FROM snapshots WHERE snapshot_id = ?", [parent]) is None:
        raise SnapshotError(f"parent snapshot {parent} is not in the catalog")
    with progress("snapshot", total=4) as bar:
        bar.set_description("snapshot: selecting records")
        selection = select_records(catalog, scan_id, policy)
        members = selection.all_members()
        counts = {s: len(selection.members[s]) for s in SPLITS}
        if counts["train"] == 0:
            raise SnapshotError("the snapshot would have no training records")
        _stage("selected")
        bar.advance()
        bar.set_description("snapshot: eval-set contamination")
        contamination, contamination_summary = check_eval_contamination(catalog, selection.members["train"], policy)
        _stage("checked")
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
        final = snapshots_dir / snapshot_id
        clean_staging(snapshots_dir)
        reused = final.exists()
        bar.set_description("snapshot: writing splits")
        batches = _contributing_batches(catalog, [m.original_record_id or m.record_id for m in members])
        if not reused:
            with atomic_directory(final) as staging:
                for split in SPLITS:
                    _write_split(staging / f"{split}.parquet", selection.members[split])
                    _stage("split_written")
                manifest = _manifest(
                    snapshot_id, policy, parent, scan_id, batches, selection, counts, excluded, contamination_summary,
                    contamination,
                )  # fmt: skip
                write_manifest(staging, manifest)
                _stage("staged")
        _stage("renamed")
        bar.advance()
        bar.set_description("snapshot: registering")
        manifest = load_manifest(final)
        if manifest.id != snapshot_id:
            raise SnapshotError(f"{final}/manifest.json names {manifest.id}, not {snapshot_id}")
        _register(catalog, manifest, final, selection, contamination, policy, parent, scan_id)
        bar.advance()
    return SnapshotResult(
        snapshot_id, final, counts, scan_id, reused, excluded, contamination_summary["contaminated_eval_items"]
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


def _write_split(path: Path, rows: list[Member]) -> None:
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
        _stage("registering")
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
    path = Path(row[0]["path"])
    manifest = load_manifest(path, verify=verify)
    if verify and manifest_sha256(path) != row[0]["manifest_sha256"]:
        raise SnapshotError(f"{path}/manifest.json differs from the catalog's record of it")
    return Snapshot(snapshot_id, path, manifest)
