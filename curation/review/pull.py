"""`refinery review pull`: fetch responses from Argilla, store them raw, then resolve and apply decisions.

Two phases. Fetch: every response of the round's dataset is stored as it came (``review_responses``, keyed by the
Argilla response id and its ``updated_at``) page by page, before anything is applied. Apply: from the stored
responses only, each record's submitted responses are resolved by the round's policy (``majority``,
``unanimous``, ``escalate``) into a decision: approve / reject rows in ``review_decisions``, and an edit as a new
record version (written by the ingest store, so its id is content-addressed, linked in ``record_versions``) plus
an 'edit' decision naming it. Decision ids derive from the responses they rest on, so a pull that is
interrupted can be rerun to completion and a second pull changes nothing.
"""

from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from curation.review.connection import Connection, ReviewError
from curation.review.push import DECISIONS, POLICIES, load_items, queue_round
from curation.review.versions import write_versions
from schemas.catalog import Catalog, add_lineage_edge, utcnow
from schemas.ids import canonical_json, sha256_text
from schemas.progress import log, progress
from schemas.records import Message, Record, Role

PAGE = 500


@dataclass
class Resolution:
    record_id: str
    state: str  # decided | pending | disagreement | escalated | invalid
    votes: dict[str, int]
    decision: str | None = None
    responses: list[dict[str, Any]] = field(default_factory=list)  # the responses the decision rests on
    corrected: str | None = None


@dataclass
class RoundPull:
    round_name: str
    fetched: int = 0
    new_responses: int = 0
    new_decisions: int = 0
    new_edits: int = 0
    states: dict[str, int] = field(default_factory=dict)
    escalated_to: str | None = None
    agreement: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)


def _value(values: dict[str, Any] | None, question: str) -> Any:
    entry = (values or {}).get(question)
    return entry.get("value") if isinstance(entry, dict) else None


def _get_json(client: Any, path: str, params: dict[str, Any]) -> Any:
    """One GET through the SDK's HTTP client (its key header); a read, so :meth:`Connection.call` may repeat it."""
    response = client.http_client.get(path, params=params)
    response.raise_for_status()
    return response.json()


def fetch_round(catalog: Catalog, connection: Connection, round_row: dict[str, Any], client: Any) -> tuple[int, int]:
    """Store every response of the round's dataset (raw, with annotator and Argilla ids); return (seen, new)."""
    round_name, dataset_id = round_row["round_name"], round_row["argilla_dataset_id"]
    users = connection.call(
        f"listing users for round {round_name}", functools.partial(_get_json, client, "/api/v1/users", {})
    )
    # only ids and names are kept: this listing also carries every user's API key
    names = {u["id"]: u["username"] for u in users["items"]}
    seen = new = 0
    offset = 0
    with progress(f"pull {round_name}") as bar:
        while True:
            body = connection.call(
                f"fetching records {offset + 1}-{offset + PAGE} of round {round_name}",
                functools.partial(
                    _get_json,
                    client,
                    f"/api/v1/datasets/{dataset_id}/records",
                    {"include": "responses", "offset": offset, "limit": PAGE},
                ),
            )
            items = body.get("items", [])
            rows = []
            now = utcnow()
            for rec in items:
                for resp in rec.get("responses") or []:
                    values = resp.get("values") or {}
                    rows.append(
                        [resp["id"], _ts(resp["updated_at"]), round_name, rec["external_id"], rec["id"], dataset_id,
                         names.get(resp["user_id"], resp["user_id"]), resp["user_id"], resp["status"],
                         _value(values, "decision"), _value(values, "corrected_response"), _value(values, "comment"),
                         canonical_json(values), _ts(resp.get("inserted_at")), now]
                    )  # fmt: skip
            with catalog.write() as con:
                before = con.execute("SELECT count(*) FROM review_responses").fetchone()
                if rows:
                    con.executemany(
                        "INSERT OR IGNORE INTO review_responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                con.executemany(
                    "UPDATE review_items SET argilla_record_id = ? WHERE round_name = ? AND record_id = ? "
                    "AND argilla_record_id IS DISTINCT FROM ?",
                    [[r["id"], round_name, r["external_id"], r["id"]] for r in items],
                )
                after = con.execute("SELECT count(*) FROM review_responses").fetchone()
            new += int(after[0]) - int(before[0]) if after and before else 0
            seen += len(rows)
            bar.advance(len(items))
            offset += len(items)
            if not items or offset >= int(body.get("total", 0)):
                break
    return seen, new


def resolve(responses: list[dict[str, Any]], min_submitted: int, policy: str) -> Resolution:
    """The outcome for one record from its latest responses under ``policy``."""
    submitted = [r for r in responses if r["status"] == "submitted" and r["decision"] in DECISIONS]
    votes = dict(Counter(r["decision"] for r in submitted))
    record_id = responses[0]["record_id"] if responses else ""
    if len(submitted) < min_submitted or not submitted:
        return Resolution(record_id, "pending", votes)
    ranked = Counter(votes).most_common()
    top, top_count = ranked[0]
    unanimous = len(ranked) == 1
    agreed = top_count * 2 > len(submitted) if policy == "majority" else unanimous
    if not agreed:
        return Resolution(record_id, "escalated" if policy == "escalate" else "disagreement", votes)
    backing = sorted((r for r in submitted if r["decision"] == top), key=lambda r: (r["updated_at"], r["response_id"]))
    corrected = None
    if top == "edit":
        texts = Counter(t.strip() for r in backing if (t := r.get("corrected_response")) and t.strip())
        if not texts:
            return Resolution(record_id, "invalid", votes, responses=backing)
        best = max(texts.values())
        corrected = next(t.strip() for r in backing if (t := r.get("corrected_response")) and texts[t.strip()] == best)
    return Resolution(record_id, "decided", votes, top, backing, corrected)


def _edited_record(original: dict[str, Any], corrected: str, round_name: str) -> Record:
    """The original conversation with its final assistant turn replaced by the correction."""
    messages = [Message(role=Role(m["role"]), content=m["content"]) for m in json.loads(original["messages_json"])]
    if messages and messages[-1].role is Role.ASSISTANT:
        messages = messages[:-1]
    messages.append(Message(role=Role.ASSISTANT, content=corrected))
    metadata = dict(json.loads(original["metadata_json"] or "{}"))
    metadata.update({"edited_from": original["record_id"], "review_round": round_name})
    return Record.from_messages(messages, label=original["label"], metadata=metadata)


def _decision_id(round_name: str, resolution: Resolution) -> str:
    basis = [round_name, resolution.record_id, resolution.decision, resolution.corrected,
             sorted([r["response_id"], str(r["updated_at"])] for r in resolution.responses)]  # fmt: skip
    return "dec_" + sha256_text(canonical_json(basis))[:20]


def _latest_responses(catalog: Catalog, round_name: str) -> dict[str, list[dict[str, Any]]]:
    rows = catalog.query(
        "SELECT * FROM review_latest_responses WHERE round_name = ? ORDER BY record_id, updated_at, response_id",
        [round_name],
    )
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[row["record_id"]].append(row)
    return grouped


def apply_round(catalog: Catalog, round_row: dict[str, Any], policy: str | None = None) -> RoundPull:
    """Resolve the stored responses of a round and write decisions, edit versions, outcomes and agreement."""
    round_name = round_row["round_name"]
    policy = policy or round_row["policy"]
    if policy not in POLICIES:
        raise ReviewError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    result = RoundPull(round_name)
    items = {
        r["record_id"]: r
        for r in catalog.query("SELECT * FROM review_items WHERE round_name = ? ORDER BY record_id", [round_name])
    }
    by_record = _latest_responses(catalog, round_name)
    resolutions = {rid: resolve(by_record.get(rid, []), int(round_row["min_submitted"]), policy) for rid in items}
    for rid, res in resolutions.items():
        res.record_id = rid
    decision_ids = {rid: _decision_id(round_name, res) for rid, res in resolutions.items() if res.state == "decided"}
    decided = [r for r in resolutions.values() if r.state == "decided"]
    new_versions = _write_edit_records(catalog, round_row, [r for r in decided if r.decision == "edit"])
    now = utcnow()
    with catalog.write() as con:
        before = con.execute("SELECT count(*) FROM review_decisions").fetchone()
        for res in decided:
            item = items[res.record_id]
            edited = new_versions.get(res.record_id)
            decision = res.decision
            if decision == "edit" and edited == res.record_id:
                decision = "approve"  # the correction normalises to the original text
            dec_id = decision_ids[res.record_id]
            if decision == "edit" and edited is not None:
                con.execute(
                    "INSERT OR IGNORE INTO record_versions VALUES (?, ?, 'edit', ?, ?, ?, ?)",
                    [edited, res.record_id, _actor(res), f"edited in review round {round_name}", round_name, now],
                )
                con.execute(
                    "UPDATE records SET parent_record_id = ? WHERE record_id = ? AND parent_record_id IS NULL "
                    "AND record_id <> ?",
                    [res.record_id, edited, res.record_id],
                )
                add_lineage_edge(con, edited, "record", res.record_id, "record", "edit_of")
            external = {
                "api_url": round_row["api_url"],
                "dataset_id": round_row["argilla_dataset_id"],
                "record_id": item["argilla_record_id"],
                "response_ids": [r["response_id"] for r in res.responses],
            }
            comments = [r["comment"].strip() for r in res.responses if r.get("comment") and r["comment"].strip()]
            con.execute(
                "INSERT OR IGNORE INTO review_decisions VALUES (?, ?, ?, ?, ?, ?, 'argilla', ?, ?, ?, ?, ?)",
                [dec_id, res.record_id, decision, edited if decision == "edit" else None, _actor(res), round_name,
                 item["check_names"], " | ".join(comments) or None, canonical_json(external),
                 max(r["updated_at"] for r in res.responses), now],
            )  # fmt: skip
            res.decision = decision
        after = con.execute("SELECT count(*) FROM review_decisions").fetchone()
        result.new_decisions = int(after[0]) - int(before[0]) if after and before else 0
        _write_outcomes(con, round_name, policy, resolutions, decision_ids, now)
    result.new_edits = sum(1 for r in decided if r.decision == "edit")
    result.states = dict(Counter(r.state for r in resolutions.values()))
    escalated = [r.record_id for r in resolutions.values() if r.state == "escalated"]
    if escalated:
        result.escalated_to = _escalate(catalog, round_row, escalated)
    result.agreement = store_agreement(catalog, round_name, by_record)
    return result


def _actor(res: Resolution) -> str:
    return ",".join(sorted({r["annotator"] for r in res.responses}))


def _write_edit_records(catalog: Catalog, round_row: dict[str, Any], edits: list[Resolution]) -> dict[str, str]:
    """Write the edited versions through the ingest store (one batch per set of edits); original -> new id."""
    if not edits:
        return {}
    round_name = round_row["round_name"]
    originals = {
        r["record_id"]: r
        for r in catalog.query(
            f"SELECT * FROM records WHERE record_id IN ({', '.join('?' for _ in edits)})", [e.record_id for e in edits]
        )
    }
    versions = {e.record_id: _edited_record(originals[e.record_id], e.corrected or "", round_name) for e in edits}
    source = f"argilla:{round_row['api_url']}/dataset/{round_row['argilla_dataset_id']}"
    return write_versions(
        catalog, versions, key={"review_round": round_name}, name=f"review:{round_name}", fmt="argilla-edit",
        source=source,
    )  # fmt: skip


def _write_outcomes(
    con: Any,
    round_name: str,
    policy: str,
    resolutions: dict[str, Resolution],
    decision_ids: dict[str, str],
    now: datetime,
) -> None:
    existing = {
        row[0]: row[1:]
        for row in con.execute(
            "SELECT record_id, state, decision, decision_id, votes_json, policy FROM review_outcomes "
            "WHERE round_name = ?",
            [round_name],
        ).fetchall()
    }
    for rid, res in resolutions.items():
        dec_id = decision_ids.get(rid)
        row = (res.state, res.decision if res.state == "decided" else None, dec_id, canonical_json(res.votes), policy)
        if existing.get(rid) == row:
            continue
        con.execute(
            "INSERT OR REPLACE INTO review_outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [round_name, rid, *row, now]
        )


def _escalate(catalog: Catalog, round_row: dict[str, Any], record_ids: list[str]) -> str:
    """Queue disagreements in the round's escalation round (pushed by `refinery review push --round NAME`)."""
    name = f"{round_row['round_name']}-escalation"
    wanted = set(record_ids)
    items = [i for i in load_items(catalog, round_row["round_name"], pending_only=False) if i.record_id in wanted]
    queue_round(
        catalog, round_row["api_url"], name, items, scan_id=None,
        min_submitted=int(round_row["min_submitted"]), policy="majority",
        workspace_name=round_row["argilla_workspace"], parent_round=round_row["round_name"],
    )  # fmt: skip
    return name


def agreement(by_record: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Round ('*') and per-annotator agreement from submitted decisions (see 0006_review.sql)."""
    votes = {
        rid: {r["annotator"]: r["decision"] for r in rows if r["status"] == "submitted" and r["decision"] in DECISIONS}
        for rid, rows in by_record.items()
    }
    multi = {rid: v for rid, v in votes.items() if len(v) >= 2}
    out: dict[str, dict[str, Any]] = {}
    if multi:
        observed = []
        totals: Counter[str] = Counter()
        for v in multi.values():
            counts = Counter(v.values())
            n = len(v)
            observed.append(sum(c * (c - 1) for c in counts.values()) / (n * (n - 1)))
            totals.update(counts)
        p_bar = sum(observed) / len(observed)
        all_votes = sum(totals.values())
        p_e = sum((c / all_votes) ** 2 for c in totals.values())
        kappa = (p_bar - p_e) / (1 - p_e) if p_e < 1 else None
        out["*"] = {
            "records": len(multi),
            "agreement": round(p_bar, 4),
            "kappa": None if kappa is None else round(kappa, 4),
        }
    per: dict[str, list[bool]] = defaultdict(list)
    for v in multi.values():
        for annotator, decision in v.items():
            others = Counter(d for a, d in v.items() if a != annotator)
            best = max(others.values())
            per[annotator].append(decision in {d for d, c in others.items() if c == best})
    for annotator, hits in sorted(per.items()):
        out[annotator] = {"records": len(hits), "agreement": round(sum(hits) / len(hits), 4), "kappa": None}
    return out


def store_agreement(
    catalog: Catalog, round_name: str, by_record: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    figures = agreement(by_record)
    stamp = max((r["fetched_at"] for rows in by_record.values() for r in rows), default=utcnow())
    with catalog.write() as con:
        current = {
            row[0]: (int(row[1]), row[2], row[3])
            for row in con.execute(
                "SELECT annotator, records, agreement, kappa FROM review_agreement WHERE round_name = ?", [round_name]
            ).fetchall()
        }
        wanted = {a: (f["records"], f["agreement"], f["kappa"]) for a, f in figures.items()}
        if current != wanted:
            con.execute("DELETE FROM review_agreement WHERE round_name = ?", [round_name])
            for annotator, (records, agree, kappa) in wanted.items():
                con.execute(
                    "INSERT INTO review_agreement VALUES (?, ?, ?, ?, ?, ?)",
                    [round_name, annotator, records, agree, kappa, stamp],
                )
    return figures


def rounds_to_pull(catalog: Catalog, round_name: str | None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM review_rounds WHERE argilla_dataset_id IS NOT NULL"
    if round_name:
        sql += " AND round_name = ?"
    rows = catalog.query(sql + " ORDER BY created_at", [round_name] if round_name else [])
    if round_name and not rows:
        raise ReviewError(f"no pushed review round {round_name!r}: run `refinery review push` first")
    return rows


def pull(
    catalog: Catalog, connection: Connection, round_name: str | None = None, policy: str | None = None
) -> list[RoundPull]:
    """Fetch and store the responses of one round (or every pushed round), then resolve and apply them."""
    rounds = rounds_to_pull(catalog, round_name)
    client = connection.client() if rounds else None
    results = []
    for row in rounds:
        seen, new = fetch_round(catalog, connection, row, client)
        result = apply_round(catalog, row, policy)
        result.fetched, result.new_responses = seen, new
        log(
            f"round {row['round_name']}: {seen} response(s) ({new} new), {result.new_decisions} new decision(s), "
            f"states {result.states}"
        )
        results.append(result)
    return results
