"""Near-duplicates across a snapshot's boundary, found with the eval-item matcher
(:mod:`curation.similarity.eval_match`): registered eval items that nearly duplicate a train member (stored with
the snapshot: its manifest's ``contamination`` and ``snapshot_contamination``), and records that nearly duplicate a
member of a frozen snapshot (``refinery snapshot check``, the eval gate). Both only read the catalog: stored
MinHash signatures are used, missing ones are sketched and not stored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from curation.similarity.eval_match import (
    ContaminationConfig,
    ContaminationError,
    Match,
    Reference,
    find_matches,
    load_eval_items,
)
from curation.similarity.near_dup import Scope, scope_text
from curation.snapshot.policy import SnapshotPolicy
from curation.snapshot.select import Member
from schemas.catalog import Catalog


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
    references = [Reference(m.record_id, member_text(m, config.scope), "train") for m in train]
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


def member_text(member: Member, scope: Scope) -> str:
    """The same prompt / response split as the catalog's columns: non-system text before the last assistant turn."""
    last = max((i for i, m in enumerate(member.messages) if m["role"] == "assistant"), default=len(member.messages))
    prompt = "\n".join(m["content"] for m in member.messages[:last] if m["role"] != "system")
    response = member.messages[last]["content"] if last < len(member.messages) else ""
    return scope_text(prompt, response, scope)


def check_against_snapshot(
    catalog: Catalog,
    snapshot_id: str,
    record_ids: Sequence[str] | None = None,
    batch_id: str | None = None,
    config: ContaminationConfig | None = None,
) -> list[Match]:
    """Records (given, or those of ``batch_id``) that nearly duplicate a member of the frozen snapshot.

    Returns every verified match (``matched_in`` is the member's split), sorted by record id, then best
    similarity first. A record that is itself a member matches itself with similarity 1.0.
    """
    config = config or ContaminationConfig(scope="pair")
    if (record_ids is None) == (batch_id is None):
        raise ContaminationError("give either record_ids or batch_id")
    if catalog.scalar("SELECT count(*) FROM snapshots WHERE snapshot_id = ?", [snapshot_id]) == 0:
        raise ContaminationError(f"unknown snapshot {snapshot_id!r}")
    if batch_id is not None:
        if catalog.scalar("SELECT count(*) FROM ingest_batches WHERE batch_id = ?", [batch_id]) == 0:
            raise ContaminationError(f"unknown batch {batch_id!r}")
        rows = catalog.query(
            "SELECT r.record_id, r.prompt, r.response FROM records r "
            "WHERE r.record_id IN (SELECT record_id FROM source_rows WHERE batch_id = ?) ORDER BY r.record_id",
            [batch_id],
        )
    else:
        wanted = sorted(set(record_ids or []))
        rows = catalog.query(
            "SELECT record_id, prompt, response FROM records WHERE list_contains(?, record_id) ORDER BY record_id",
            [wanted],
        )
        missing = sorted(set(wanted) - {r["record_id"] for r in rows})
        if missing:
            raise ContaminationError(f"unknown record(s): {', '.join(missing[:5])}")
    members = catalog.query(
        "SELECT m.record_id, m.split, r.prompt, r.response FROM snapshot_members m JOIN records r USING (record_id) "
        "WHERE m.snapshot_id = ? ORDER BY m.record_id",
        [snapshot_id],
    )
    references = [
        Reference(m["record_id"], scope_text(m["prompt"], m["response"], config.scope), m["split"]) for m in members
    ]
    ids = [r["record_id"] for r in rows]
    texts = [scope_text(r["prompt"], r["response"], config.scope) for r in rows]
    matches, _, _ = find_matches(catalog, ids, texts, references, config, store=False)
    return matches
