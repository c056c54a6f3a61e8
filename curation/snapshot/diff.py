"""`refinery snapshot diff A B`: which records B adds, removes, changes or moves relative to A, and why.

Records are matched by their source record (the original of an edited version), so an edited version that
replaces its parent is *changed*, not one removal plus one addition. Reasons come from the exclusions and
member bases both snapshots stored when they were made:

- added: ``new_data`` (A never saw it), ``review_decision`` (A held it back or it was rejected, a human approved
  it), ``dedup`` (A removed it as a duplicate), ``policy`` (A held it back, B's policy lets it in), ``eval_set``;
- removed: ``forgotten``, ``review_decision`` (rejected, with the annotator), ``dedup``, ``policy`` (held back by a
  blocking check under B's policy), ``eval_set`` (now also an eval item), ``not_in_training_data``;
- changed: ``review_decision`` (an edit, with the annotator) or ``policy``;
- moved: a record in both whose split differs (a new seed or fractions, or stratification after new data).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from schemas.catalog import Catalog
from schemas.errors import InputError


class SnapshotDiffError(InputError):
    """A snapshot to compare is not in the catalog."""


def _members(catalog: Catalog, snapshot_id: str) -> dict[str, dict[str, Any]]:
    rows = catalog.query(
        "SELECT m.record_id, m.split, m.basis, m.original_record_id, d.actor, d.round_name, d.decision "
        "FROM snapshot_members m LEFT JOIN review_decisions d USING (decision_id) WHERE m.snapshot_id = ?",
        [snapshot_id],
    )
    return {r["original_record_id"] or r["record_id"]: r for r in rows}


def _exclusions(catalog: Catalog, snapshot_id: str) -> dict[str, dict[str, Any]]:
    rows = catalog.query(
        "SELECT e.record_id, e.reason, e.detail, d.actor, d.round_name FROM snapshot_exclusions e "
        "LEFT JOIN review_decisions d USING (decision_id) WHERE e.snapshot_id = ?",
        [snapshot_id],
    )
    return {r["record_id"]: r for r in rows}


_EXCLUSION_REASON = {
    "forgotten": "forgotten",
    "rejected": "review_decision",
    "duplicate": "dedup",
    "held_back": "policy",
    "in_eval_set": "eval_set",
}


def diff_snapshots(catalog: Catalog, a: str, b: str) -> dict[str, Any]:
    """Added, removed, changed and moved records from snapshot ``a`` to ``b``, each with a reason."""
    snaps = {r["snapshot_id"]: r for r in catalog.query("SELECT snapshot_id, policy_json FROM snapshots")}
    for sid in (a, b):
        if sid not in snaps:
            raise SnapshotDiffError(f"no snapshot {sid} in the catalog (see `refinery snapshot list`)")
    policy_changed = snaps[a]["policy_json"] != snaps[b]["policy_json"]
    in_a, in_b = _members(catalog, a), _members(catalog, b)
    out_a, out_b = _exclusions(catalog, a), _exclusions(catalog, b)
    added, removed, changed, moved = [], [], [], []
    for key in sorted(in_b.keys() - in_a.keys()):
        member, before = in_b[key], out_a.get(key)
        if before is None:
            reason, detail = "new_data", "not a training record when A was made"
        elif member["basis"] in ("approved", "edited") and before["reason"] in ("held_back", "rejected", "duplicate"):
            reason, detail = "review_decision", f"{member['decision']} by {member['actor']} ({member['round_name']})"
        else:
            reason = _EXCLUSION_REASON.get(before["reason"], "policy")
            if reason == "policy" or (reason == "dedup" and policy_changed):
                reason = "policy"
            detail = f"A: {before['reason']}: {before['detail']}"
        added.append({"record_id": member["record_id"], "split": member["split"], "reason": reason, "detail": detail,
                      "actor": member["actor"]})  # fmt: skip
    for key in sorted(in_a.keys() - in_b.keys()):
        member, after = in_a[key], out_b.get(key)
        if after is None:
            reason, detail, actor = "not_in_training_data", "no longer a training record", None
        else:
            reason, detail, actor = _EXCLUSION_REASON.get(after["reason"], "policy"), after["detail"], after["actor"]
            if reason == "policy" and policy_changed:
                detail += " (the policy changed)"
        removed.append({"record_id": member["record_id"], "split": member["split"], "reason": reason,
                        "detail": detail, "actor": actor})  # fmt: skip
    for key in sorted(in_a.keys() & in_b.keys()):
        old, new = in_a[key], in_b[key]
        if old["record_id"] != new["record_id"]:
            edited = new["basis"] == "edited"
            changed.append(
                {
                    "record_id": new["record_id"],
                    "previous_record_id": old["record_id"],
                    "source_record_id": key,
                    "reason": "review_decision" if edited else "policy",
                    "detail": f"edited by {new['actor']} ({new['round_name']})" if edited else "edit no longer applied",
                    "actor": new["actor"] if edited else None,
                    "split": new["split"],
                }
            )
        if old["split"] != new["split"]:
            moved.append({"record_id": new["record_id"], "from": old["split"], "to": new["split"]})
    by_reason: Counter[str] = Counter()
    for kind, rows in (("added", added), ("removed", removed), ("changed", changed)):
        by_reason.update(f"{kind}:{r['reason']}" for r in rows)
    return {
        "a": a,
        "b": b,
        "policy_changed": policy_changed,
        "summary": {
            "added": len(added),
            "removed": len(removed),
            "changed": len(changed),
            "moved": len(moved),
            "by_reason": dict(sorted(by_reason.items())),
        },
        "added": added,
        "removed": removed,
        "changed": changed,
        "moved": moved,
    }
