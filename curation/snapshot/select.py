"""Selecting a snapshot's records: the policy applied to the catalog (see :mod:`curation.snapshot.policy`), each
member with its basis (``policy``, ``approved`` or ``edited``) and the review decision it relied on, each excluded
record with its reason, and every member dealt to a split (:mod:`curation.snapshot.splits`)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from curation.snapshot.policy import SPLITS, SnapshotError, SnapshotPolicy
from curation.snapshot.splits import assign_splits, group_keys, majority
from schemas.catalog import Catalog


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
class Cause:
    """A check behind an exclusion: its finding's score (a blocking check) or the duplicate kept instead."""

    check_name: str
    score: float | None = None
    kept_record_id: str | None = None


@dataclass(frozen=True)
class Exclusion:
    record_id: str
    reason: str  # 'forgotten', 'in_eval_set', 'rejected', 'duplicate', 'held_back'
    detail: str
    decision_id: str | None = None
    causes: tuple[Cause, ...] = ()  # the checks that caused it (none for 'forgotten' and 'in_eval_set')


@dataclass
class Selection:
    """What the policy chose: members by split, exclusions, and the review decisions relied on."""

    members: dict[str, list[Member]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    exclusions: list[Exclusion] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    changes: dict[str, tuple[Cause, ...]] = field(default_factory=dict)  # edited member -> checks behind its review

    def all_members(self) -> list[Member]:
        return [m for s in SPLITS for m in self.members[s]]

    def check_effects(self) -> dict[str, dict[str, int]]:
        """Per check: records left out because of it, left out for it alone, and members changed (edited) after a
        review it sent them to (the ``snapshot_check_effects`` view, computed before the snapshot is stored)."""
        effects: dict[str, dict[str, int]] = defaultdict(lambda: {"dropped": 0, "dropped_alone": 0, "changed": 0})
        for exclusion in self.exclusions:
            for cause in {c.check_name for c in exclusion.causes}:
                effects[cause]["dropped"] += 1
                effects[cause]["dropped_alone"] += len({c.check_name for c in exclusion.causes}) == 1
        for causes in self.changes.values():
            for cause in {c.check_name for c in causes}:
                effects[cause]["changed"] += 1
        return {check: effects[check] for check in sorted(effects, key=lambda c: (-effects[c]["dropped"], c))}


def latest_scan(catalog: Catalog) -> str:
    scan_id = catalog.scalar("SELECT scan_id FROM latest_scan")
    if scan_id is None:
        raise SnapshotError("no completed scan: run `refinery scan` before `refinery snapshot create`")
    return str(scan_id)


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
            "SELECT decision_id, record_id, decision, edited_record_id, actor, round_name, source, check_names "
            "FROM record_decisions"
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


def _decision_causes(check_names: str | None) -> tuple[Cause, ...]:
    """The checks that sent a record to the review that decided it (``review_decisions.check_names``)."""
    names = sorted({name.strip() for name in (check_names or "").split(",") if name.strip()})
    return tuple(Cause(name) for name in names)


def _unresolved(blocks: list[Cause], decision: tuple[Any, ...] | None) -> list[Cause]:
    """The blocking flags a record still has: an automatic edit (``review auto``: a relabel by the label check's
    suggestion) resolves the flags of the checks it acted on, and no other (a human approval resolves all)."""
    if decision is None or decision[6] != "policy" or decision[2] != "edit":
        return blocks
    acted_on = {c.check_name for c in _decision_causes(decision[7])}
    return [c for c in blocks if c.check_name not in acted_on]


def select_records(catalog: Catalog, scan_id: str, policy: SnapshotPolicy) -> Selection:
    """Apply the policy to the catalog (:mod:`curation.snapshot.policy`); assign splits."""
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
    blocks: dict[str, list[Cause]] = defaultdict(list)
    for rid, check, score, flagged in data["findings"]:
        threshold = policy.score_thresholds.get(check)
        if (flagged and check in policy.blocking_checks) or (threshold is not None and score >= threshold):
            blocks[rid].append(Cause(check, float(score)))
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
            why = f"rejected by {decision[4]} ({decision[5] or decision[6]})"
            exclusion = Exclusion(rid, "rejected", why, did, _decision_causes(decision[7]))
        elif rid in removed:
            check, kept = removed[rid]
            if not (approved and policy.approval_restores_near_duplicates and check != "exact"):
                cause = (Cause(check, None, kept),)
                exclusion = Exclusion(rid, "duplicate", f"{check} duplicate of {kept}", None, cause)
        elif (blocking := _unresolved(blocks.get(rid, []), decision)) and not approved:
            flagged_by = ", ".join(f"{c.check_name} ({c.score:.3g})" for c in blocking)
            exclusion = Exclusion(rid, "held_back", f"flagged by {flagged_by}, not approved", None, tuple(blocking))
        if exclusion is None and decision is not None and decision[2] == "edit":
            new_id = decision[3]
            if new_id in forgotten:
                exclusion = Exclusion(rid, "forgotten", f"its edited version {new_id} is forgotten", did)
            else:
                _, messages_json, label, metadata_json = data["edited"][new_id]
                # the edited version takes its original's place, group included
                chosen.append(Member(new_id, json.loads(messages_json), label, metadata_json, rid, "edited", did, rid))
                selection.changes[new_id] = _decision_causes(decision[7])
                continue
        if exclusion is not None:
            selection.exclusions.append(exclusion)
            continue
        basis = "approved" if approved else "policy"
        chosen.append(Member(rid, json.loads(messages_json), label, metadata_json, rid, basis, did))

    keys = group_keys(data["clusters"], [m.group for m in chosen])
    for member in chosen:
        member.group = keys[member.group]
    sizes: dict[str, list[str | None]] = defaultdict(list)
    for member in chosen:
        sizes[member.group].append(member.label)
    group_info = {key: (majority(labels), len(labels)) for key, labels in sizes.items()}
    split_by_group = assign_splits(group_info, policy)
    for member in sorted(chosen, key=lambda m: m.record_id):
        member.split = split_by_group[member.group]
        selection.members[member.split].append(member)
    selection.decisions = [
        {"decision_id": d[0], "record_id": d[1], "decision": d[2], "actor": d[4], "round_name": d[5], "source": d[6]}
        for _, d in sorted(used_decisions.items())
    ]
    return selection
