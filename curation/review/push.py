"""`refinery review push`: send flagged records of a scan to an Argilla dataset, one dataset per round.

The round's items are written to the catalog first (``review_items``, ``pushed_at`` NULL), then logged to Argilla
in batches with the Refinery record id as the Argilla record id (external id), and marked pushed batch by
batch. Argilla upserts by that id, so a push interrupted by a server error and run again adds no duplicates; a
rerun of a complete push sends nothing. Records that already have a decision are not queued again.

Each call to Argilla is retried with backoff when the server is down, times out or answers 5xx
(:meth:`Connection.call`); every one is safe to repeat (lookups, a creation that first looks for what exists, and
upserts by id). A key that may not write (an annotator's) is refused with :class:`ReviewPermissionError`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from curation.checks.registry import guide
from curation.review.connection import Connection, ReviewError
from schemas.catalog import Catalog, utcnow
from schemas.ids import canonical_json
from schemas.progress import log, progress

DECISIONS = ("approve", "reject", "edit")
#: The check whose flag comes with a suggested label (its findings' ``details.suggested_label``).
LABEL_CHECK = "label_issue"
POLICIES = ("majority", "unanimous", "escalate")
DEFAULT_WORKSPACE = "refinery"


@dataclass
class ReviewItem:
    record_id: str
    prompt: str
    response: str
    scores: dict[str, float]
    reasons: dict[str, str | None]
    other_record_id: str | None = None
    other_prompt: str | None = None
    other_response: str | None = None
    suggested_label: str | None = None  # label_issue: the label the record's neighbourhood carries
    response_is_label: bool = False  # label_issue: the response is the label (so an edit to it relabels)

    @property
    def top_check(self) -> str:
        return max(self.scores, key=lambda c: (self.scores[c], c))


@dataclass
class PushResult:
    round_name: str
    dataset_name: str
    dataset_id: str
    api_url: str
    queued: int
    pushed: int
    already_pushed: int
    checks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def latest_scan_id(catalog: Catalog) -> str:
    scan_id = catalog.scalar("SELECT scan_id FROM latest_scan")
    if scan_id is None:
        raise ReviewError("no complete scan in the catalog: run `refinery scan` first")
    return str(scan_id)


def select_items(
    catalog: Catalog, scan_id: str, checks: Sequence[str] | None = None, limit: int | None = None
) -> list[ReviewItem]:
    """Records flagged by ``checks`` (all checks when None) in ``scan_id`` and not yet decided, worst first."""
    if catalog.scalar("SELECT count(*) FROM scans WHERE scan_id = ?", [scan_id]) == 0:
        raise ReviewError(f"no scan {scan_id!r} in the catalog")
    params: list[Any] = [scan_id]
    check_filter = ""
    if checks:
        check_filter = f"AND f.check_name IN ({', '.join('?' for _ in checks)})"
        params += list(checks)
    rows = catalog.query(
        f"""
        SELECT f.record_id, f.check_name, f.score, f.reason, r.prompt, r.response, f.details_json
        FROM findings f JOIN records r USING (record_id)
        WHERE f.scan_id = ? AND f.flagged {check_filter}
          AND f.record_id NOT IN (SELECT record_id FROM record_decisions)
        ORDER BY f.record_id, f.check_name
        """,
        params,
    )
    items: dict[str, ReviewItem] = {}
    for row in rows:
        item = items.setdefault(row["record_id"], ReviewItem(row["record_id"], row["prompt"], row["response"], {}, {}))
        item.scores[row["check_name"]] = float(row["score"])
        item.reasons[row["check_name"]] = row["reason"]
        if row["check_name"] == LABEL_CHECK and row["details_json"]:
            _set_suggestion(item, json.loads(row["details_json"]))
    ordered = sorted(items.values(), key=lambda i: (-max(i.scores.values()), i.record_id))
    if limit is not None:
        ordered = ordered[:limit]
    _attach_others(catalog, scan_id, ordered)
    return ordered


def _set_suggestion(item: ReviewItem, details: dict[str, Any]) -> None:
    item.suggested_label = details.get("suggested_label")
    item.response_is_label = bool(details.get("response_is_label"))


def _attach_others(catalog: Catalog, scan_id: str, items: list[ReviewItem]) -> None:
    """The other record of pair findings (finding_pairs first, then the duplicate cluster's kept member)."""
    if not items:
        return
    ids = [i.record_id for i in items]
    marks = ", ".join("?" for _ in ids)
    pairs = catalog.query(
        f"SELECT record_a AS rid, record_b AS other, check_name, score FROM finding_pairs "
        f"WHERE scan_id = ? AND record_a IN ({marks}) ORDER BY score DESC, record_b",
        [scan_id, *ids],
    )
    clusters = catalog.query(
        f"""
        SELECT d.record_id AS rid, coalesce(
                   CASE WHEN d.is_kept THEN NULL ELSE d.kept_record_id END,
                   (SELECT min(o.record_id) FROM duplicate_members o WHERE o.scan_id = d.scan_id
                      AND o.check_name = d.check_name AND o.cluster_id = d.cluster_id
                      AND o.record_id <> d.record_id)) AS other, d.check_name
        FROM duplicate_members d WHERE d.scan_id = ? AND d.record_id IN ({marks}) ORDER BY d.check_name
        """,
        [scan_id, *ids],
    )
    other: dict[str, str] = {}
    for row in [*pairs, *clusters]:
        by_item = next(i for i in items if i.record_id == row["rid"])
        if row["other"] and row["check_name"] in by_item.scores:
            other.setdefault(row["rid"], row["other"])
    if not other:
        return
    wanted = sorted(set(other.values()))  # two items can name the same other record
    texts = {
        r["record_id"]: r
        for r in catalog.query(
            f"SELECT record_id, prompt, response FROM records WHERE record_id IN ({', '.join('?' for _ in wanted)})",
            wanted,
        )
    }
    for item in items:
        found = texts.get(other.get(item.record_id, ""))
        if found:
            item.other_record_id = found["record_id"]
            item.other_prompt = found["prompt"]
            item.other_response = found["response"]


def guidelines(checks: Sequence[str], min_submitted: int) -> str:
    lines = [
        "# Refinery review",
        "",
        "Each record was flagged by one or more quality checks (see *findings*, the check scores in the metadata "
        "and the suggested decision). Decide for **this record** (prompt + response):",
        "",
        "- **approve**: keep it as it is.",
        "- **reject**: leave it out of training data.",
        "- **edit**: keep it with a corrected response: write the full corrected response in *corrected_response*.",
        "",
        "When another record is shown (*other_prompt*, *other_response*), it is the record this one duplicates or "
        "conflicts with; it gets its own review item if it was flagged too.",
        f"Each record needs {min_submitted} submitted response(s). Use *comment* to explain unusual decisions.",
        "",
        "## Checks",
    ]
    for check in checks:
        lines.append(f"- **{check}**: {guide(check)}")
    return "\n".join(lines)


def metadata_name(check: str) -> str:
    return "score_" + "".join(c if c.isalnum() else "_" for c in check.lower())


def dataset_settings(checks: Sequence[str], min_submitted: int, vector_dims: int | None = None) -> Any:
    """The Argilla dataset settings of a round (fixed once the dataset is published)."""
    import argilla as rg

    return rg.Settings(
        guidelines=guidelines(checks, min_submitted),
        fields=[
            rg.TextField(name="prompt", title="Prompt"),
            rg.TextField(name="response", title="Response"),
            rg.TextField(name="findings", title="Why it was flagged", required=False),
            rg.TextField(name="other_prompt", title="Other record: prompt", required=False),
            rg.TextField(name="other_response", title="Other record: response", required=False),
        ],
        questions=[
            rg.LabelQuestion(
                name="decision",
                title="Decision",
                labels={"approve": "approve", "reject": "reject", "edit": "edit (write the correction below)"},
            ),
            rg.TextQuestion(name="corrected_response", title="Corrected response (for edit)", required=False),
            rg.TextQuestion(name="comment", title="Comment", required=False),
        ],
        metadata=[
            rg.TermsMetadataProperty(name="checks", title="checks"),
            *[rg.FloatMetadataProperty(name=metadata_name(c), title=f"{c} score", min=0.0, max=1.0) for c in checks],
        ],
        vectors=[rg.VectorField(name="prompt_embedding", dimensions=vector_dims)] if vector_dims else [],
        distribution=rg.TaskDistribution(min_submitted=min_submitted),
    )


def argilla_record(item: ReviewItem, vector: Sequence[float] | None = None) -> Any:
    import argilla as rg

    findings = "\n".join(
        f"{check} (score {item.scores[check]:.3f}): {item.reasons.get(check) or ''}".rstrip(": ")
        for check in sorted(item.scores)
    )
    fields = {"prompt": item.prompt, "response": item.response or "(no response)", "findings": findings}
    if item.other_record_id:
        fields["other_prompt"] = item.other_prompt or ""
        fields["other_response"] = item.other_response or "(no response)"
    metadata: dict[str, Any] = {"checks": sorted(item.scores)}
    metadata.update({metadata_name(c): s for c, s in item.scores.items()})
    vectors = {"prompt_embedding": [float(v) for v in vector]} if vector is not None else {}
    return rg.Record(
        id=item.record_id, fields=fields, metadata=metadata, suggestions=suggestions(item), vectors=vectors
    )


def suggestions(item: ReviewItem) -> list[Any]:
    """What Argilla pre-fills: 'reject' from the worst check; for a label issue whose response is the label,
    'edit' with the suggested label as the corrected response (accepting it relabels the record)."""
    import argilla as rg

    if item.suggested_label and item.response_is_label and LABEL_CHECK in item.scores:
        score = item.scores[LABEL_CHECK]
        return [
            rg.Suggestion(question_name="decision", value="edit", score=score, agent=LABEL_CHECK),
            rg.Suggestion(
                question_name="corrected_response", value=item.suggested_label, score=score, agent=LABEL_CHECK
            ),
        ]
    top = item.top_check
    return [rg.Suggestion(question_name="decision", value="reject", score=item.scores[top], agent=top)]


def default_round_name(scan_id: str) -> str:
    return f"review-{scan_id.removeprefix('scan_')}"


def _round_row(catalog: Catalog, round_name: str) -> dict[str, Any] | None:
    rows = catalog.query("SELECT * FROM review_rounds WHERE round_name = ?", [round_name])
    return rows[0] if rows else None


def queue_round(
    catalog: Catalog,
    api_url: str,
    round_name: str,
    items: Sequence[ReviewItem],
    *,
    scan_id: str | None,
    min_submitted: int,
    policy: str,
    workspace_name: str = DEFAULT_WORKSPACE,
    parent_round: str | None = None,
) -> dict[str, Any]:
    """Create the round (if new) and add ``items`` not already in it; return the round row."""
    if policy not in POLICIES:
        raise ReviewError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if min_submitted < 1:
        raise ReviewError("min_submitted must be at least 1")
    now = utcnow()
    with catalog.write() as con:
        existing = con.execute("SELECT scan_id FROM review_rounds WHERE round_name = ?", [round_name]).fetchone()
        if existing is None:
            checks = sorted({c for i in items for c in i.scores})
            config = {"min_submitted": min_submitted, "policy": policy, "workspace": workspace_name}
            con.execute(
                "INSERT INTO review_rounds VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
                [round_name, f"refinery-{round_name}", workspace_name, api_url, scan_id, parent_round,
                 ",".join(checks), min_submitted, policy, canonical_json(config), now],
            )  # fmt: skip
        elif scan_id is not None and existing[0] not in (None, scan_id):
            raise ReviewError(f"round {round_name!r} reviews scan {existing[0]}, not {scan_id}: choose another --round")
        for item in items:
            con.execute(
                "INSERT OR IGNORE INTO review_items (round_name, record_id, other_record_id, check_names, "
                "scores_json, queued_at) VALUES (?, ?, ?, ?, ?, ?)",
                [round_name, item.record_id, item.other_record_id, ",".join(sorted(item.scores)),
                 canonical_json(item.scores), now],
            )  # fmt: skip
    row = _round_row(catalog, round_name)
    assert row is not None
    return row


def load_items(catalog: Catalog, round_name: str, pending_only: bool) -> list[ReviewItem]:
    where = "AND i.pushed_at IS NULL" if pending_only else ""
    rows = catalog.query(
        f"""
        SELECT i.record_id, i.other_record_id, i.scores_json, r.prompt, r.response, o.prompt AS other_prompt,
               o.response AS other_response,
               (SELECT list(f.check_name || '=' || coalesce(f.reason, '')) FROM findings f
                 WHERE f.record_id = i.record_id AND f.scan_id = rr.scan_id) AS reasons,
               (SELECT any_value(f.details_json) FROM findings f WHERE f.record_id = i.record_id
                 AND f.scan_id = rr.scan_id AND f.check_name = ? AND f.flagged) AS label_details
        FROM review_items i JOIN review_rounds rr USING (round_name) JOIN records r USING (record_id)
        LEFT JOIN records o ON o.record_id = i.other_record_id
        WHERE i.round_name = ? {where} ORDER BY i.queued_at, i.record_id
        """,
        [LABEL_CHECK, round_name],
    )
    items = []
    for row in rows:
        reasons = dict(r.split("=", 1) for r in row["reasons"] or [])
        item = ReviewItem(
            row["record_id"],
            row["prompt"],
            row["response"],
            json.loads(row["scores_json"]),
            {k: v or None for k, v in reasons.items()},
            row["other_record_id"],
            row["other_prompt"],
            row["other_response"],
        )
        if row["label_details"]:
            _set_suggestion(item, json.loads(row["label_details"]))
        items.append(item)
    return items


def ensure_dataset(connection: Connection, client: Any, round_row: dict[str, Any], vector_dims: int | None) -> Any:
    """The round's Argilla dataset: found, or created and published (a draft left by a crash is replaced).

    Safe to repeat, so it is retried as a whole: each try looks for what an earlier one left.
    """
    import argilla as rg

    name, ws_name = round_row["dataset_name"], round_row["argilla_workspace"]

    def prepare() -> Any:
        workspace = client.workspaces(ws_name)
        if workspace is None:
            workspace = rg.Workspace(name=ws_name, client=client).create()
        dataset = client.datasets(name=name, workspace=ws_name)
        if dataset is not None and dataset._model.status != "ready":
            dataset.delete()  # a creation interrupted before publishing
            dataset = None
        if dataset is None:
            checks = [c for c in round_row["checks"].split(",") if c]
            settings = dataset_settings(checks, int(round_row["min_submitted"]), vector_dims)
            dataset = rg.Dataset(name=name, workspace=workspace, settings=settings, client=client).create()
        return dataset

    return connection.call(f"preparing dataset {name}", prepare)


def push_round(
    catalog: Catalog,
    connection: Connection,
    round_name: str,
    batch_size: int = 100,
    embed: Callable[[list[str]], list[list[float]]] | None = None,
) -> PushResult:
    """Log the round's not-yet-pushed items to Argilla, marking each batch pushed once the server holds it."""
    round_row = _round_row(catalog, round_name)
    if round_row is None:
        raise ReviewError(f"no review round {round_name!r}: push with --scan to create it")
    pending = load_items(catalog, round_name, pending_only=True)
    total = catalog.scalar("SELECT count(*) FROM review_items WHERE round_name = ?", [round_name])
    vectors: dict[str, list[float]] = {}
    if embed is not None and pending:
        vectors = dict(zip((i.record_id for i in pending), embed([i.record_id for i in pending]), strict=True))
    client = connection.client()
    dims = len(next(iter(vectors.values()))) if vectors else None
    dataset = ensure_dataset(connection, client, round_row, dims)
    if round_row["argilla_dataset_id"] != str(dataset.id):
        with catalog.write() as con:
            con.execute(
                "UPDATE review_rounds SET argilla_dataset_id = ? WHERE round_name = ?", [str(dataset.id), round_name]
            )
    pushed = 0
    with progress(f"push {round_name}", total=len(pending)) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            records = [argilla_record(i, vectors.get(i.record_id)) for i in batch]
            connection.call(
                f"pushing records {start + 1}-{start + len(batch)} of {len(pending)}",
                functools.partial(dataset.records.log, records, batch_size=batch_size),  # upsert by id: repeatable
            )
            with catalog.write() as con:
                con.executemany(
                    "UPDATE review_items SET pushed_at = ? WHERE round_name = ? AND record_id = ?",
                    [[utcnow(), round_name, i.record_id] for i in batch],
                )
            pushed += len(batch)
            bar.advance(len(batch))
    log(f"round {round_name}: {pushed} record(s) pushed to {connection.api_url} dataset {round_row['dataset_name']}")
    return PushResult(
        round_name=round_name,
        dataset_name=round_row["dataset_name"],
        dataset_id=str(dataset.id),
        api_url=connection.api_url,
        queued=int(total),
        pushed=pushed,
        already_pushed=int(total) - len(pending),
        checks=[c for c in round_row["checks"].split(",") if c],
    )


def push(
    catalog: Catalog,
    connection: Connection,
    *,
    round_name: str | None = None,
    scan_id: str | None = None,
    checks: Sequence[str] | None = None,
    limit: int | None = None,
    min_submitted: int = 1,
    policy: str = "majority",
    workspace_name: str = DEFAULT_WORKSPACE,
    embed: Callable[[list[str]], list[list[float]]] | None = None,
    batch_size: int = 100,
) -> PushResult:
    """Queue the flagged, undecided records of a scan in a round and push what Argilla does not hold yet.

    Rerunning with the same arguments resumes an interrupted push; a round that exists keeps its settings.
    """
    existing = _round_row(catalog, round_name) if round_name else None
    if existing is not None and scan_id is None and existing["scan_id"] is None:
        return push_round(catalog, connection, existing["round_name"], batch_size, embed)  # an escalation round
    scan = scan_id or (existing["scan_id"] if existing else None) or latest_scan_id(catalog)
    name = round_name or default_round_name(scan)
    items = select_items(catalog, scan, checks, limit)
    if not items and _round_row(catalog, name) is None:
        raise ReviewError(
            f"scan {scan} has no flagged, undecided records{' for ' + ','.join(checks) if checks else ''}"
        )
    if existing is not None and (existing["min_submitted"] != min_submitted or existing["policy"] != policy):
        log(f"round {name} keeps its settings (min_submitted {existing['min_submitted']}, {existing['policy']})")
    queue_round(
        catalog, connection.api_url, name, items, scan_id=scan, min_submitted=min_submitted, policy=policy,
        workspace_name=workspace_name,
    )  # fmt: skip
    return push_round(catalog, connection, name, batch_size, embed)
