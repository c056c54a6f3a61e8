"""`refinery lineage ID`: the chain from an eval run or adapter back to source files and row numbers.

eval run -> adapter + the eval set's own ingest batches (relation ``eval_set``) -> source files; adapter ->
snapshot (counts, basis of its members, exclusions by reason, policy) -> review rounds (records per annotator and
decision the snapshot relied on) + scan (checks, thresholds, flagged counts) + ingest batches -> source files with
row ranges. A record shows its source rows, decisions, forget requests, the original it was edited from, and
every snapshot and adapter holding it.

:func:`render_lineage` draws the tree for the terminal with the key facts of each node (floats rounded, whole
configs, the snapshot policy and hashes left out); ``refinery lineage ID --json`` prints everything.
"""

from __future__ import annotations

import json
from typing import Any

from eval.registry import EVENT_PREFIX as PROMOTION_PREFIX
from schemas.artifact_paths import resolve_stored, workspace_root
from schemas.catalog import Catalog
from schemas.errors import InputError
from schemas.ids import kind_of


class LineageError(InputError):
    """The id is unknown or names nothing in the catalog."""


def lineage(catalog: Catalog, identifier: str) -> dict[str, Any]:
    """A nested dict: each node has ``kind``, ``id``, a few facts and ``parents`` (list of nodes)."""
    kind = "promotion" if identifier.startswith(PROMOTION_PREFIX) else kind_of(identifier)
    builders = {
        "promotion": _promotion_node,
        "eval": _eval_node,
        "adapter": _adapter_node,
        "snapshot": _snapshot_node,
        "scan": _scan_node,
        "batch": _batch_node,
        "record": _record_node,
    }
    if kind not in builders:
        raise LineageError(
            f"{identifier!r} is not an id Refinery knows "
            "(expected rec_, batch_, scan_, snap_, adp_, eval_ or promo_ prefix)"
        )
    with catalog.reading():  # its many small reads share one connection and one state of the catalog
        return builders[kind](catalog, identifier)


def _one(catalog: Catalog, sql: str, params: list[Any], what: str) -> dict[str, Any]:
    rows = catalog.query(sql, params)
    if not rows:
        raise LineageError(f"no {what} {params[0]} in the catalog")
    return rows[0]


def _eval_node(catalog: Catalog, eval_id: str) -> dict[str, Any]:
    row = _one(catalog, "SELECT * FROM eval_runs WHERE eval_id = ?", [eval_id], "eval run")
    eval_batches = catalog.query(
        "SELECT parent_id FROM lineage_edges WHERE child_id = ? AND parent_kind = 'batch' AND relation = 'eval_set' "
        "ORDER BY parent_id",
        [eval_id],
    )
    return {
        "kind": "eval",
        "id": eval_id,
        "verdict": row["verdict"],
        "metric": row["metric"],
        "adapter_score": row["adapter_score"],
        "baselines": json.loads(row["baselines_json"]),
        "ci": [row["ci_low"], row["ci_high"]],
        "eval_set": row["eval_set"],
        "eval_set_hash": row["eval_set_hash"],
        "reason": row["reason"],
        "parents": [
            _adapter_node(catalog, row["adapter_id"]),
            *({**_batch_node(catalog, b["parent_id"]), "relation": "eval_set"} for b in eval_batches),
        ],
    }


def _adapter_node(catalog: Catalog, adapter_id: str) -> dict[str, Any]:
    row = _one(catalog, "SELECT * FROM adapters WHERE adapter_id = ?", [adapter_id], "adapter")
    base = catalog.query("SELECT * FROM base_models WHERE base_model_id = ?", [row["base_model_id"]])
    verdicts = catalog.query(
        "SELECT eval_id, verdict, metric, adapter_score FROM eval_runs WHERE adapter_id = ? ORDER BY created_at",
        [adapter_id],
    )
    return {
        "kind": "adapter",
        "id": adapter_id,
        "path": str(resolve_stored(row["path"], workspace_root(catalog))),
        "train_loss": row["train_loss"],
        "val_loss": row["val_loss"],
        "base_model": {
            "id": row["base_model_id"],
            **({"source": base[0]["source"], "sha256": base[0]["sha256"]} if base else {}),
        },
        "verdicts": verdicts,
        "promotions": _promotions(catalog, adapter_id),
        "parents": [_snapshot_node(catalog, row["snapshot_id"])],
    }


def _promotions(catalog: Catalog, adapter_id: str) -> list[dict[str, Any]]:
    """Registry events that made the adapter current or replaced it (promote, force_promote, rollback)."""
    return catalog.query(
        "SELECT event_id, action, adapter_id, previous_adapter_id, eval_id, reason, actor, created_at "
        "FROM promotions WHERE adapter_id = ? OR previous_adapter_id = ? ORDER BY seq",
        [adapter_id, adapter_id],
    )


def _promotion_node(catalog: Catalog, event_id: str) -> dict[str, Any]:
    row = _one(catalog, "SELECT * FROM promotions WHERE event_id = ?", [event_id], "promotion event")
    return {
        "kind": "promotion",
        "id": event_id,
        "action": row["action"],
        "previous_adapter_id": row["previous_adapter_id"],
        "eval_id": row["eval_id"],
        "reason": row["reason"],
        "actor": row["actor"],
        "created_at": row["created_at"],
        "parents": [_adapter_node(catalog, row["adapter_id"])],
    }


def _snapshot_node(catalog: Catalog, snapshot_id: str) -> dict[str, Any]:
    """The snapshot with its review decisions (per round, annotator and decision), scan, batches and parent."""
    row = _one(catalog, "SELECT * FROM snapshots WHERE snapshot_id = ?", [snapshot_id], "snapshot")
    parents = _review_nodes(catalog, snapshot_id)
    if row["scan_id"]:
        parents.append(_scan_node(catalog, row["scan_id"]))
    batches = catalog.query(
        "SELECT parent_id FROM lineage_edges WHERE child_id = ? AND parent_kind = 'batch' ORDER BY parent_id",
        [snapshot_id],
    )
    for b in batches:
        parents.append(_batch_node(catalog, b["parent_id"], snapshot_id=snapshot_id))
    if row["parent_id"]:
        parents.append({"kind": "snapshot", "id": row["parent_id"], "relation": "parent", "parents": []})
    basis = catalog.query(
        "SELECT basis, count(*) AS n FROM snapshot_members WHERE snapshot_id = ? GROUP BY 1 ORDER BY 1", [snapshot_id]
    )
    excluded = catalog.query(
        "SELECT reason, count(*) AS n FROM snapshot_exclusions WHERE snapshot_id = ? GROUP BY 1 ORDER BY 1",
        [snapshot_id],
    )
    contaminated = catalog.scalar(
        "SELECT count(DISTINCT (eval_set, eval_item)) FROM snapshot_contamination WHERE snapshot_id = ?", [snapshot_id]
    )
    effects = catalog.query(
        "SELECT check_name, dropped, dropped_alone, changed FROM snapshot_check_effects WHERE snapshot_id = ?",
        [snapshot_id],
    )
    return {
        "kind": "snapshot",
        "id": snapshot_id,
        "path": str(resolve_stored(row["path"], workspace_root(catalog))),
        "counts": {"train": row["train"], "validation": row["validation"], "test": row["test"]},
        "basis": {str(r["basis"]): r["n"] for r in basis},
        "excluded": {r["reason"]: r["n"] for r in excluded},
        # per check: records this snapshot left out (alone: for that check only) or changed; each exclusion's
        # finding is (scan_id, record_id, check_name) in snapshot_exclusion_causes
        "check_effects": effects,
        "contaminated_eval_items": contaminated,
        "policy": json.loads(row["policy_json"]),
        "parents": parents,
    }


def _review_nodes(catalog: Catalog, snapshot_id: str) -> list[dict[str, Any]]:
    """One node per review round (automatic decisions under 'policy') whose decisions the snapshot relied on:
    how many records each annotator approved, rejected or edited."""
    rows = catalog.query(
        "WITH used AS (SELECT decision_id FROM snapshot_members WHERE snapshot_id = ? AND decision_id IS NOT NULL "
        "UNION SELECT decision_id FROM snapshot_exclusions WHERE snapshot_id = ? AND decision_id IS NOT NULL) "
        "SELECT coalesce(d.round_name, 'policy') AS round_name, d.actor, d.decision, count(*) AS records "
        "FROM review_decisions d JOIN used USING (decision_id) GROUP BY ALL ORDER BY 1, 2, 3",
        [snapshot_id, snapshot_id],
    )
    rounds: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        rounds.setdefault(r["round_name"], []).append(
            {"actor": r["actor"], "decision": r["decision"], "records": r["records"]}
        )
    return [
        {
            "kind": "review_round",
            "id": name,
            "records": sum(d["records"] for d in decisions),
            "annotators": sorted({d["actor"] for d in decisions}),
            "decisions": decisions,
            "parents": [],
        }
        for name, decisions in rounds.items()
    ]


def _scan_node(catalog: Catalog, scan_id: str) -> dict[str, Any]:
    row = _one(catalog, "SELECT * FROM scans WHERE scan_id = ?", [scan_id], "scan")
    return {
        "kind": "scan",
        "id": scan_id,
        "records": row["records"],
        "config": json.loads(row["config_json"]),
        "summary": {
            k: {kk: vv for kk, vv in v.items() if kk != "trace"}
            for k, v in json.loads(row["summary_json"] or "{}").items()
        },
        "parents": [],
    }


def _batch_node(catalog: Catalog, batch_id: str, snapshot_id: str | None = None) -> dict[str, Any]:
    row = _one(catalog, "SELECT * FROM ingest_batches WHERE batch_id = ?", [batch_id], "ingest batch")
    if snapshot_id is None:
        files = catalog.query(
            "SELECT file, count(*) AS rows, count(DISTINCT record_id) AS records, min(row) AS first_row, "
            "max(row) AS last_row FROM source_rows "
            "WHERE batch_id = ? GROUP BY file ORDER BY file",
            [batch_id],
        )
    else:
        files = catalog.query(
            "SELECT s.file, count(*) AS rows, count(DISTINCT s.record_id) AS records, min(s.row) AS first_row, "
            "max(s.row) AS last_row "
            "FROM source_rows s JOIN snapshot_members m USING (record_id) "
            "WHERE s.batch_id = ? AND m.snapshot_id = ? GROUP BY s.file ORDER BY s.file",
            [batch_id, snapshot_id],
        )
    return {
        "kind": "batch",
        "id": batch_id,
        "name": row["name"],
        "purpose": row["purpose"],
        "format": row["format"],
        "rows_read": row["rows_read"],
        "ingested": row["ingested"],
        "quarantined": row["quarantined"],
        "parents": [
            {
                "kind": "file",
                "id": f["file"],
                "rows": f["rows"],
                "records": f["records"],
                "first_row": f["first_row"],
                "last_row": f["last_row"],
                "parents": [],
            }
            for f in files
        ],
    }


def _record_node(catalog: Catalog, record_id: str) -> dict[str, Any]:
    """A record: its source rows, the versions it derives from, review decisions, forget requests and where
    it is used (snapshots and adapters, also through edited versions of it)."""
    row = _one(catalog, "SELECT * FROM records WHERE record_id = ?", [record_id], "record")
    sources = catalog.query(
        "SELECT batch_id, batch_name, purpose, eval_set, file, row, sub_index FROM record_sources "
        "WHERE record_id = ? ORDER BY file, row, sub_index",
        [record_id],
    )
    used_in = catalog.query(
        "SELECT m.snapshot_id, m.split, m.basis, m.record_id AS member_record_id, a.adapter_id "
        "FROM snapshot_members m LEFT JOIN adapters a USING (snapshot_id) "
        "WHERE m.record_id = ? OR m.original_record_id = ? ORDER BY 1, 5",
        [record_id, record_id],
    )
    decisions = catalog.query(
        "SELECT decision_id, decision, actor, round_name, source, edited_record_id, decided_at FROM review_decisions "
        "WHERE record_id = ? ORDER BY decided_at",
        [record_id],
    )
    forgotten = catalog.query(
        "SELECT forget_id, kind, target, reason, actor, created_at FROM forgotten_records WHERE record_id = ?",
        [record_id],
    )
    excluded_from = catalog.query(
        "SELECT e.snapshot_id, e.reason, e.detail, e.decision_id, "
        "list(c.check_name ORDER BY c.check_name) FILTER (WHERE c.check_name IS NOT NULL) AS checks, "
        "any_value(c.scan_id) AS scan_id FROM snapshot_exclusions e LEFT JOIN snapshot_exclusion_causes c "
        "USING (snapshot_id, record_id) WHERE e.record_id = ? GROUP BY ALL ORDER BY 1",
        [record_id],
    )
    parents: list[dict[str, Any]] = [
        {"kind": "source_row", "id": f"{s['file']}:{s['row']}", **s, "parents": []} for s in sources
    ]
    version = catalog.query("SELECT * FROM record_versions WHERE record_id = ?", [record_id])
    if version:
        v = version[0]
        original = _record_node(catalog, v["parent_record_id"])
        parents.append({**original, "relation": v["kind"], "by": v["actor"], "made_by": v["source_id"]})
    return {
        "kind": "record",
        "id": record_id,
        "prompt": row["prompt"][:200],
        "response": row["response"][:200],
        "label": row["label"],
        "decisions": decisions,
        "forgotten": forgotten,
        "used_in": used_in,
        "excluded_from": excluded_from,
        "parents": parents,
    }


def render_lineage(node: dict[str, Any]) -> Any:
    """A rich Tree of the lineage dict for the terminal: each node's kind, id and key facts, in full."""
    from rich.markup import escape
    from rich.tree import Tree

    def label(n: dict[str, Any]) -> str:
        text = ", ".join(f"{k}={v}" for k, v in _facts(n).items())
        return f"[bold]{n['kind']}[/bold] {escape(str(n['id']))}" + (f"  [dim]{escape(text)}[/dim]" if text else "")

    def add(tree: Tree, n: dict[str, Any]) -> None:
        for parent in n.get("parents", []):
            add(tree.add(label(parent)), parent)

    root = Tree(label(node))
    add(root, node)
    return root


#: Facts the tree leaves out (``--json`` has them): whole configs, the snapshot policy, hashes.
_LEFT_OUT = frozenset({"kind", "id", "parents", "policy", "config", "eval_set_hash", "sha256"})


def _facts(node: dict[str, Any]) -> dict[str, str]:
    """The node's facts as short texts: numbers rounded, lists and mappings summarised by what they hold."""
    shown: dict[str, str] = {}
    for key, value in node.items():
        if key in _LEFT_OUT or value in (None, "", [], {}):
            continue
        text = _SHOW[key](value) if key in _SHOW else _plain(value)
        if text:
            shown[key] = text
    return shown


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if hasattr(value, "strftime") else str(value)


def _plain(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, dict) and all(not isinstance(v, dict | list) for v in value.values()):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, dict | list):
        return f"{len(value)} (see --json)"
    return _num(value) if isinstance(value, int | float) else _when(value)


def _checks(summary: dict[str, Any]) -> str:
    """A scan's summary: the checks that flagged records (how many, at which threshold), those that flagged
    none, and those that failed."""
    flagged, clean, failed = [], [], []
    for check, facts in summary.items():
        if facts.get("error"):
            failed.append(check)
        elif facts.get("flagged"):
            at = f" at {_num(facts['threshold'])}" if facts.get("threshold") is not None else ""
            flagged.append(f"{check} {_num(facts['flagged'])}{at}")
        else:
            clean.append(check)
    parts = [f"flagged: {', '.join(flagged)}"] if flagged else []
    parts += [f"none flagged: {', '.join(clean)}"] if clean else []
    parts += [f"failed: {', '.join(failed)}"] if failed else []
    return "; ".join(parts)


_SHOW: dict[str, Any] = {
    "ci": lambda ci: f"{_num(ci[0])} to {_num(ci[1])}" if len(ci) == 2 and None not in ci else "",
    "base_model": lambda b: b["id"] + (f" ({b['source']})" if b.get("source") else ""),
    "verdicts": lambda vs: "; ".join(
        f"{v['eval_id']} {v['verdict']} {v['metric']} {_num(v['adapter_score'])}" for v in vs
    ),
    "promotions": lambda ps: "; ".join(
        f"{p['action']} {p['adapter_id']} by {p['actor']} {_when(p['created_at'])}" for p in ps
    ),
    "decisions": lambda ds: "; ".join(
        f"{d['actor']} {d['decision']}"
        + (f" {_num(d['records'])}" if "records" in d else "")
        + (f" ({d['round_name']})" if d.get("round_name") else "")
        for d in ds
    ),
    "forgotten": lambda fs: "; ".join(f"{f['forget_id']} by {f['actor']}: {_plain(f['reason'] or '')}" for f in fs),
    "used_in": lambda us: "; ".join(
        f"{u['snapshot_id']} {u['split']}" + (f" ({u['adapter_id']})" if u.get("adapter_id") else "") for u in us
    ),
    "summary": _checks,
    "check_effects": lambda es: ", ".join(
        f"{e['check_name']} {_effect(e)}" for e in es if e["dropped"] or e["changed"]
    ),
    "excluded_from": lambda xs: "; ".join(f"{x['snapshot_id']} ({x['reason']}: {_plain(x['detail'])})" for x in xs),
}


def _effect(effect: dict[str, Any]) -> str:
    """'439 out (380 alone)', '12 changed', or both."""
    parts = []
    if effect["dropped"]:
        alone = f" ({effect['dropped_alone']} alone)" if effect["dropped_alone"] != effect["dropped"] else ""
        parts.append(f"{effect['dropped']} out{alone}")
    if effect["changed"]:
        parts.append(f"{effect['changed']} changed")
    return " ".join(parts)
