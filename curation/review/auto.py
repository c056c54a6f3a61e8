"""Automatic decisions by policy (`refinery review auto`): act on a scan's label-issue findings without a human.

A finding of ``label_issue`` (or any check whose details carry ``suggested_label``) at or above ``min_score`` gets
one decision, stored like a reviewer's with ``source = 'policy'`` and ``actor = 'policy:<check>>=<min_score>'``:

* ``relabel``: an ``edit`` decision and a new version of the record carrying the suggested label (its final
  assistant turn when the response is the label, as in intent data; else the ``label`` field). The new version is an
  ordinary record (an ingest batch named ``policy:<check>``, ``record_versions`` kind ``relabel``, a lineage edge
  ``relabel_of``), so a snapshot holds the new label and lineage leads back to the finding's check.
* ``reject``: a ``reject`` decision; the snapshot leaves the record out, the decision as its cause.

A human decision always wins: a record a reviewer decided is left alone, and a human decision made after the
policy's outranks it whatever its time (the ``record_decisions`` view ranks human decisions first: migration 0013).
A policy edit resolves the flag of the check it acted on, and only that one: another blocking check's flag still
holds the record back until a human approves it (:mod:`curation.snapshot.select`). Decision ids hash the scan,
check, threshold, record and suggestion, so running the same policy twice adds nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from curation.review.versions import write_versions
from curation.snapshot.select import latest_scan
from schemas.catalog import Catalog, add_lineage_edge, utcnow
from schemas.errors import InputError
from schemas.ids import canonical_json, sha256_text
from schemas.records import Message, Record, Role

Action = Literal["relabel", "reject"]
ACTIONS: tuple[Action, ...] = ("relabel", "reject")


@dataclass
class AutoResult:
    scan_id: str
    check: str
    min_score: float
    action: str
    actor: str
    considered: int = 0  # findings at or above min_score
    decided: int = 0  # decisions written now
    already: int = 0  # the same decision was stored by an earlier run
    left_to_humans: int = 0  # a human decision exists: the policy leaves it
    without_suggestion: int = 0  # nothing to relabel to
    changes: dict[str, int] = field(default_factory=dict)  # "old -> new" label: count (relabel)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["changes"] = dict(sorted(self.changes.items(), key=lambda kv: (-kv[1], kv[0]))[:20])
        return out


def _relabelled(original: dict[str, Any], suggested: str, response_is_label: bool, actor: str) -> Record:
    """The record with the suggested label: the final assistant turn when the response is the label, and the
    ``label`` field when the record has one."""
    messages = [Message(role=Role(m["role"]), content=m["content"]) for m in json.loads(original["messages_json"])]
    if response_is_label and messages and messages[-1].role is Role.ASSISTANT:
        messages[-1] = Message(role=Role.ASSISTANT, content=suggested)
    label = suggested if original["label"] is not None else None
    metadata = dict(json.loads(original["metadata_json"] or "{}"))
    metadata.update({"relabelled_from": original["record_id"], "relabelled_by": actor})
    return Record.from_messages(messages, label=label, metadata=metadata)


def apply_policy(
    catalog: Catalog,
    *,
    check: str = "label_issue",
    min_score: float = 0.7,
    action: Action = "relabel",
    scan_id: str | None = None,
) -> AutoResult:
    """Write the policy's decisions for ``check``'s findings of ``scan_id`` (default: the latest scan)."""
    if action not in ACTIONS:
        raise InputError(f"unknown action {action!r}; choose one of {', '.join(ACTIONS)}")
    if not 0.0 < min_score <= 1.0:
        raise InputError(f"--min-score must be in (0, 1], got {min_score}")
    scan_id = scan_id or latest_scan(catalog)
    if catalog.scalar("SELECT count(*) FROM scans WHERE scan_id = ? AND status = 'complete'", [scan_id]) == 0:
        raise InputError(f"no complete scan {scan_id}")
    if catalog.scalar("SELECT count(*) FROM findings WHERE scan_id = ? AND check_name = ?", [scan_id, check]) == 0:
        raise InputError(f"scan {scan_id} has no findings of {check}: run `refinery scan --checks {check}` first")
    actor = f"policy:{check}>={min_score:g}"
    result = AutoResult(scan_id, check, min_score, action, actor)
    rows = catalog.query(
        "SELECT f.record_id, f.score, f.details_json, r.messages_json, r.label, r.metadata_json, "
        "d.source AS decided_by, d.decision_id AS latest_decision "
        "FROM findings f JOIN records r USING (record_id) LEFT JOIN record_decisions d USING (record_id) "
        "WHERE f.scan_id = ? AND f.check_name = ? AND f.flagged AND f.score >= ? ORDER BY f.record_id",
        [scan_id, check, min_score],
    )
    result.considered = len(rows)
    planned: list[tuple[str, dict[str, Any], str | None]] = []  # (decision id, row, suggestion)
    for row in rows:
        if row["decided_by"] is not None and row["decided_by"] != "policy":
            result.left_to_humans += 1
            continue
        details = json.loads(row["details_json"] or "{}")
        suggested = details.get("suggested_label")
        if action == "relabel" and not suggested:
            result.without_suggestion += 1
            continue
        basis = [scan_id, check, min_score, action, row["record_id"], suggested if action == "relabel" else None]
        dec_id = "dec_" + sha256_text(canonical_json(basis))[:20]
        if row["latest_decision"] == dec_id:
            result.already += 1
            continue
        row["response_is_label"] = bool(details.get("response_is_label"))
        row["old_label"] = details.get("label")
        planned.append((dec_id, row, suggested))
    versions: dict[str, str] = {}
    if action == "relabel" and planned:
        records = {row["record_id"]: _relabelled(row, str(s), row["response_is_label"], actor) for _, row, s in planned}
        versions = write_versions(
            catalog, records, key={"policy": actor, "scan_id": scan_id}, name=f"policy:{check}",
            fmt="policy-relabel", source=f"refinery:{actor}",
        )  # fmt: skip
    now = utcnow()
    with catalog.write() as con:
        for dec_id, row, suggested in planned:
            rid = row["record_id"]
            new_id = versions.get(rid)
            decision = "reject" if action == "reject" else ("edit" if new_id and new_id != rid else "approve")
            if decision == "edit" and new_id is not None:
                con.execute(
                    "INSERT OR IGNORE INTO record_versions VALUES (?, ?, 'relabel', ?, ?, ?, ?)",
                    [new_id, rid, actor, f"{row['old_label']} -> {suggested} (score {row['score']:.3f})", scan_id,
                     now],
                )  # fmt: skip
                con.execute(
                    "UPDATE records SET parent_record_id = ? WHERE record_id = ? AND parent_record_id IS NULL",
                    [rid, new_id],
                )
                add_lineage_edge(con, new_id, "record", rid, "record", "relabel_of")
                key = f"{row['old_label']} -> {suggested}"
                result.changes[key] = result.changes.get(key, 0) + 1
            comment = f"{check} score {row['score']:.3f}" + (
                f": {row['old_label']} -> {suggested}" if suggested else ""
            )
            con.execute(
                "INSERT OR IGNORE INTO review_decisions VALUES (?, ?, ?, ?, ?, NULL, 'policy', ?, ?, ?, ?, ?)",
                [dec_id, rid, decision, new_id if decision == "edit" else None, actor, check, comment,
                 canonical_json({"scan_id": scan_id}), now, now],
            )  # fmt: skip
            result.decided += 1
    return result
