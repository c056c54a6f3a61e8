"""What curation did to the planted damage: per check, the records the curated snapshot left out, by damage kind.

Usage: python explain.py WORKSPACE SNAPSHOT_ID TRUTH_CSV [--json OUT]

Reads the catalog (``snapshot_exclusion_causes``, ``snapshot_check_effects``) and damage.py's truth.csv (records are
matched to truth rows by their user text and answer). Prints, per check, how many records it kept out and of which
kind (flipped, near_dup_copy, truncated, clean), and what is left in the snapshot's train and validation splits.
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
        truth = {(r["text"], r["category"]): r["damage"] for r in csv.DictReader(f)}
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
            "SELECT record_id FROM snapshot_members WHERE snapshot_id = ?", [args.snapshot_id]
        ).fetchall()
    kind_of: dict[str, str] = {}
    for record_id, messages_json in records:
        messages = json.loads(messages_json)
        kind_of[record_id] = truth.get((messages[0]["content"], messages[-1]["content"]), "unknown")
    by_check: dict[str, Counter[str]] = defaultdict(Counter)
    for record_id, check in causes:
        by_check[check][kind_of.get(record_id, "unknown")] += 1
    out = {
        "ingested": dict(Counter(kind_of.values())),
        "kept": dict(Counter(kind_of.get(r, "unknown") for (r,) in members)),
        "dropped_by_check": {check: dict(counts) for check, counts in sorted(by_check.items())},
    }
    print(f"{'':16}" + "".join(f"{k:>15}" for k in KINDS))
    for name, counts in [("ingested", out["ingested"]), ("in snapshot", out["kept"])] + [
        (f"out: {check}", counts) for check, counts in out["dropped_by_check"].items()
    ]:
        print(f"{name:16}" + "".join(f"{counts.get(k, 0):>15}" for k in KINDS))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
