"""What curation did to the planted damage: per check, the records the curated snapshot left out, by damage kind.

Usage: python explain.py WORKSPACE SNAPSHOT_ID TRUTH_CSV [--json OUT]

Reads the catalog (``snapshot_exclusion_causes``, ``snapshot_members``) and damage.py's truth.csv (records are matched
to truth rows by their user text and answer). Prints, per check, how many records it kept out and of which kind
(flipped, near_dup_copy, truncated, clean); what is left in the snapshot's train and validation splits, by the kind of
the ingested record (a member relabelled by `refinery review auto` counts under its original); how many members were
relabelled, to the true intent or not; and how many members' answers are not their true intent (the label noise the
adapter trains on).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

from schemas.catalog import Catalog

KINDS = ("flipped", "near_dup_copy", "truncated", "clean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("snapshot_id")
    parser.add_argument("truth_csv", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with args.truth_csv.open(newline="", encoding="utf-8") as f:
        truth = {(r["text"], r["category"]): r for r in csv.DictReader(f)}
    catalog = Catalog(args.workspace / "catalog.duckdb")
    with catalog.read() as con:
        records = con.execute(
            "SELECT r.record_id, r.messages_json FROM records r JOIN source_rows s USING (record_id) "
            "JOIN ingest_batches b USING (batch_id) WHERE b.purpose = 'train'"
        ).fetchall()
        causes = con.execute(
            "SELECT record_id, check_name FROM snapshot_exclusion_causes WHERE snapshot_id = ?", [args.snapshot_id]
        ).fetchall()
        members = con.execute(
            "SELECT m.record_id, coalesce(m.original_record_id, m.record_id), r.messages_json, m.basis "
            "FROM snapshot_members m JOIN records r USING (record_id) WHERE m.snapshot_id = ?",
            [args.snapshot_id],
        ).fetchall()
    kind_of: dict[str, str] = {}
    true_of: dict[str, str] = {}
    for record_id, messages_json in records:
        messages = json.loads(messages_json)
        key = (messages[0]["content"], messages[-1]["content"])
        kind_of[record_id] = truth[key]["damage"] if key in truth else "unknown"
        true_of[record_id] = truth[key]["true_category"] if key in truth else ""
    relabelled: Counter[str] = Counter()
    wrong = 0
    for record_id, original, messages_json, basis in members:
        answer = json.loads(messages_json)[-1]["content"]
        right = answer == true_of.get(original)
        wrong += not right
        if record_id != original and basis == "edited":
            relabelled[f"{kind_of.get(original, 'unknown')}, {'to the true intent' if right else 'wrongly'}"] += 1
    by_check: dict[str, Counter[str]] = defaultdict(Counter)
    for record_id, check in causes:
        by_check[check][kind_of.get(record_id, "unknown")] += 1
    out = {
        "ingested": dict(Counter(kind_of.values())),
        "kept": dict(Counter(kind_of.get(original, "unknown") for _, original, _, _ in members)),
        "dropped_by_check": {check: dict(counts) for check, counts in sorted(by_check.items())},
        "relabelled": dict(sorted(relabelled.items())),
        "members": len(members),
        "members_not_their_true_intent": wrong,
    }
    print(f"{'':16}" + "".join(f"{k:>15}" for k in KINDS))
    for name, counts in [("ingested", out["ingested"]), ("in snapshot", out["kept"])] + [
        (f"out: {check}", counts) for check, counts in out["dropped_by_check"].items()
    ]:
        print(f"{name:16}" + "".join(f"{counts.get(k, 0):>15}" for k in KINDS))
    for what, n in out["relabelled"].items():
        print(f"relabelled: {what}: {n}")
    print(f"members whose answer is not their true intent: {wrong} of {len(members)} ({wrong / len(members):.1%})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
