"""Wiring of the model stages: train an adapter on a snapshot, evaluate it, record both in the catalog.

`training` and `eval` never import each other or `curation`; this module hands each the plain data it needs
(conversations, folders) and stores what they return as immutable artifacts plus catalog rows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.similarity.exact import dedup_key
from curation.snapshot import load_snapshot
from refinery.errors import UsageError
from refinery.workspace import Workspace
from schemas.atomic import atomic_directory, clean_staging
from schemas.catalog import add_lineage_edge, utcnow
from schemas.ids import artifact_id, canonical_json
from schemas.manifest import load_manifest, manifest_sha256, new_manifest, write_manifest
from schemas.progress import log
from schemas.records import prompt_text

#: Inside an adapter artifact folder: the peft adapter (weights, config, curves); the manifest sits beside it.
ADAPTER_SUBDIR = "adapter"


def _conversations(rows: list[dict[str, Any]]) -> list[list[dict[str, str]]]:
    return [[{"role": m["role"], "content": m["content"]} for m in row["messages"]] for row in rows]


def train_adapter(ws: Workspace, snapshot_id: str, base_spec: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) the adapter for (snapshot, base model, config); return its summary."""
    from training.base_model import resolve_base_model
    from training.config import load_train_config
    from training.recipe import train_lora
    from training.rehearsal import RehearsalSetError, load_rehearsal_set

    catalog = ws.catalog
    snapshot = load_snapshot(catalog, snapshot_id)
    config = load_train_config(overrides)
    base = resolve_base_model(base_spec, ws.models_dir, trust_remote_code=config.trust_remote_code)
    with catalog.write() as con:
        con.execute(
            "INSERT OR IGNORE INTO base_models VALUES (?, ?, ?, ?, ?)",
            [base.model_id, base.source, ws.stored_path(base.path), base.sha256, utcnow()],
        )
    rehearsal_set = None
    if config.rehearsal.share > 0:  # checked before any training; its content is part of the adapter's identity
        try:
            rehearsal_set = load_rehearsal_set(config.rehearsal.path)[2]
        except RehearsalSetError as exc:
            raise UsageError(str(exc)) from None
    identity = {"snapshot": snapshot_id, "base_model": base.sha256, "config": config.to_json()}
    if rehearsal_set is not None:
        identity["rehearsal_set"] = rehearsal_set
    adapter_id = artifact_id("adapter", identity)
    final = ws.adapters_dir / adapter_id
    clean_staging(ws.adapters_dir)
    if not final.exists():
        train = _conversations(snapshot.read_split("train"))
        validation = _conversations(snapshot.read_split("validation"))
        log(f"training adapter {adapter_id} on {len(train)} conversations of {snapshot_id} ({base.name})")
        with atomic_directory(final) as staging:
            result = train_lora(
                base, train, validation, config, staging / ADAPTER_SUBDIR, ws.checkpoints_dir / adapter_id
            )
            metrics = result.to_json()
            curves = json.loads((staging / ADAPTER_SUBDIR / "curves.json").read_text())
            weights = "adapter_model.safetensors" if config.method == "lora" else "model.safetensors"
            manifest = new_manifest(
                "adapter",
                adapter_id,
                parents=[snapshot_id, base.model_id],
                config={"train": config.to_json(), "base_model": base.to_json()},
                counts={
                    "train_conversations": len(train),
                    "validation_conversations": len(validation),
                    "rehearsal_conversations": metrics["rehearsal"].get("general_conversations", 0),
                },
                extra={
                    "snapshot_id": snapshot_id,
                    "base_model_id": base.model_id,
                    "base_model_sha256": base.sha256,
                    "method": config.method,
                    "seed": config.seed,
                    "weights": f"{ADAPTER_SUBDIR}/{weights}",
                    "curves_files": [f"{ADAPTER_SUBDIR}/curves.json", f"{ADAPTER_SUBDIR}/curves.png"],
                    "loss_curves": {"train": curves["train"], "validation": curves["validation"]},
                    "metrics": metrics,
                    "rehearsal": metrics["rehearsal"],
                },
            )
            write_manifest(staging, manifest)
        log(f"adapter written to {final}")
    manifest = load_manifest(final)
    metrics = manifest.extra["metrics"]
    with catalog.write() as con:
        con.execute(
            "INSERT OR IGNORE INTO adapters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                adapter_id,
                snapshot_id,
                base.model_id,
                ws.stored_path(final),
                manifest_sha256(final),
                canonical_json(manifest.config),
                metrics.get("train_loss"),
                metrics.get("val_loss"),
                utcnow(),
            ],
        )
        add_lineage_edge(con, adapter_id, "adapter", snapshot_id, "snapshot", "trained_on")
        add_lineage_edge(con, adapter_id, "adapter", base.model_id, "base_model", "adapts")
    keys = ("train_loss", "val_loss", "best_step", "steps", "real_tokens", "tokens_per_second", "seconds")
    return {
        "adapter_id": adapter_id,
        "path": str(final),
        "snapshot_id": snapshot_id,
        "base_model": base.name,
        **{k: metrics.get(k) for k in keys},
    }


def _eval_rows(ws: Workspace, snapshot: Any, eval_set: str | None) -> tuple[str, list[dict[str, Any]]]:
    """(eval set name, rows with record_id, messages, label) for a registered set or the snapshot's test split."""
    if eval_set is None:
        return "snapshot:test", snapshot.read_split("test")
    rows = ws.catalog.query(
        """
        SELECT r.record_id, r.messages_json, r.label, min(s.file) AS file, min(s.row) AS row
        FROM records r JOIN source_rows s USING (record_id) JOIN ingest_batches b USING (batch_id)
        WHERE b.purpose = 'eval' AND b.eval_set = ?
        GROUP BY r.record_id, r.messages_json, r.label ORDER BY file, row, r.record_id
        """,
        [eval_set],
    )
    if not rows:
        known = [r["eval_set"] for r in ws.catalog.query("SELECT DISTINCT eval_set FROM eval_items ORDER BY 1")]
        raise UsageError(f"no eval set named {eval_set!r}; registered: {', '.join(known) or 'none'}")
    return eval_set, [
        {"record_id": r["record_id"], "messages": json.loads(r["messages_json"]), "label": r["label"]} for r in rows
    ]


def _subset(rows: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` rows in a fixed hash order: a deterministic, label-blind sample."""
    if limit is None or limit >= len(rows):
        return rows
    return sorted(rows, key=lambda r: hashlib.sha256(r["record_id"].encode()).hexdigest())[:limit]


def evaluate_adapter(
    ws: Workspace, adapter_id: str, eval_set: str | None, limit: int | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Evaluate an adapter against the baselines (base model prompted, and the champion when another adapter
    is promoted), check contamination and general-capability regression, store predictions and the verdict."""
    from eval.examples import EvalExample, EvalTask, TaskKind, eval_set_hash
    from eval.runner import EvalConfig, run_eval

    catalog = ws.catalog
    found = catalog.query("SELECT * FROM adapters WHERE adapter_id = ?", [adapter_id])
    if not found:
        raise UsageError(f"no adapter {adapter_id} in the catalog (train one with `refinery train`)")
    adapter = found[0]
    adapter_folder = ws.artifact_path(adapter["path"])
    load_manifest(adapter_folder)  # verified before use
    adapter_path = adapter_folder / ADAPTER_SUBDIR
    base_path = ws.artifact_path(
        catalog.scalar("SELECT path FROM base_models WHERE base_model_id = ?", [adapter["base_model_id"]])
    )
    snapshot = load_snapshot(catalog, adapter["snapshot_id"])
    train_rows = snapshot.read_split("train")
    set_name, rows = _eval_rows(ws, snapshot, eval_set)
    rows = [r for r in _subset(rows, limit) if r["messages"] and r["messages"][-1]["role"] == "assistant"]
    if not rows:
        raise UsageError(f"eval set {set_name} has no examples with a reference answer")

    def example(row: dict[str, Any], index: int) -> EvalExample:
        msgs = row["messages"]
        reference = row["label"] if row["label"] is not None else msgs[-1]["content"]
        return EvalExample(
            example_index=index, record_id=row["record_id"], messages=tuple(msgs[:-1]), reference=reference
        )

    config = EvalConfig.model_validate(overrides)
    contamination = _contamination(ws, snapshot, rows, train_rows)
    excluded: list[str] = []
    if config.contamination == "exclude" and contamination["items"]:
        excluded = contamination["items"]
        dropped = set(excluded)
        rows = [r for r in rows if r["record_id"] not in dropped]
        contamination = {"items": [], "method": f"{contamination['method']}; {len(excluded)} excluded before scoring"}
        if not rows:
            raise UsageError(f"every sampled example of eval set {set_name} overlaps the training data")
    examples = [example(r, i) for i, r in enumerate(rows)]
    shots_pool = [example(r, i) for i, r in enumerate(train_rows) if r["messages"][-1]["role"] == "assistant"]
    task = config.task or _task_for(train_rows, rows, EvalTask, TaskKind)
    champion, champion_note = _champion(ws, adapter)
    general_set = _general_set(config)
    ehash = eval_set_hash(examples)
    eval_id = artifact_id(
        "eval",
        {
            "adapter": adapter_id,
            "eval_set": ehash,
            "config": config.model_dump(mode="json", exclude={"cpu_threads"}),  # threads change no result
            "task": task.model_dump(mode="json"),
            "champion": champion.adapter_id if champion else None,
            "general_set": general_set.sha256 if general_set else None,
        },
    )
    final = ws.evals_dir / eval_id
    clean_staging(ws.evals_dir)
    if not final.exists():
        report = run_eval(
            base_path,
            adapter_path,
            examples,
            task,
            shots_pool,
            config,
            contaminated=bool(contamination["items"]),
            champion=champion,
            general_set=general_set,
        )
        payload = report.to_json()
        payload["contaminated_items"] = contamination["items"]
        payload["contamination_method"] = contamination["method"]
        payload["excluded_contaminated_items"] = excluded
        if excluded:
            payload["reason"] += (
                f" ({len(excluded)} sampled eval examples overlapping the training data were excluded before "
                "scoring: contamination: exclude)"
            )
        payload["champion_note"] = champion_note
        results = [r.model_dump() for r in report.rows()]
        with atomic_directory(final) as staging:
            (staging / "report.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
            pq.write_table(pa.Table.from_pylist(results), staging / "predictions.parquet")
            manifest = new_manifest(
                "eval",
                eval_id,
                parents=[adapter_id, adapter["snapshot_id"], *([champion.adapter_id] if champion else [])],
                config={"eval": config.model_dump(mode="json"), "eval_set": set_name, "limit": limit},
                counts={"examples": len(examples)},
                extra={"eval_set_hash": ehash, "verdict": payload["verdict"]},
            )
            write_manifest(staging, manifest)
    load_manifest(final)
    payload = json.loads((final / "report.json").read_text())
    _register_eval(ws, eval_id, adapter, set_name, final, payload)
    payload = {"eval_id": eval_id, "eval_set": set_name, **payload}
    hidden = (
        "task", "config", "base_path", "adapter_path", "shot_record_ids", "contaminated_items",
        "excluded_contaminated_items",
    )  # fmt: skip
    return {
        **{k: v for k, v in payload.items() if k not in hidden},
        "task_kind": payload["task"]["kind"],
        "contaminated_items": len(payload["contaminated_items"]),
        "excluded_contaminated_items": len(payload.get("excluded_contaminated_items", [])),
    }


def _contamination(
    ws: Workspace, snapshot: Any, rows: list[dict[str, Any]], train_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Eval examples that overlap the snapshot's training data: same prompt after normalisation, or a near
    duplicate of a train or validation member (curation's check_against_snapshot, prompt contents with templates
    stripped). Returns the contaminated record ids and the methods used.

    Both are recomputed with the current checks at every eval. The matches the snapshot stored when it was frozen
    (``snapshot_contamination``, train split only) are not reused: the near-duplicate check here covers them, and
    a snapshot frozen by an older version of the check may hold stale matches (before template stripping,
    banking77's snapshot stored 1,952 test items as matches of training queries that merely share the prompt
    template; 250 of a 400-item sample).
    """
    from curation.similarity.eval_match import ContaminationConfig
    from curation.snapshot.contamination import check_against_snapshot

    train_prompts = {dedup_key(prompt_text(r["messages"])) for r in train_rows}
    items = {r["record_id"] for r in rows if dedup_key(prompt_text(r["messages"])) in train_prompts}
    methods = ["exact_prompt"]
    config = ContaminationConfig(scope="prompt")
    matches = check_against_snapshot(ws.catalog, snapshot.snapshot_id, [r["record_id"] for r in rows], config=config)
    items |= {m.record_id for m in matches if m.matched_in in ("train", "validation")}
    methods.append(f"near_dup_prompt(jaccard>={config.threshold})")
    return {"items": sorted(items), "method": "+".join(methods)}


def _champion(ws: Workspace, adapter: dict[str, Any]) -> tuple[Any, str | None]:
    """The promoted adapter as a baseline (None, with why, when there is none, it is the one under test, or it
    adapts another base model)."""
    from eval.registry import current
    from eval.runner import Champion

    event = current(ws.catalog)
    if event is None:
        return None, "no adapter is promoted"
    if event.adapter_id == adapter["adapter_id"]:
        return None, "the adapter under test is the promoted one"
    found = ws.catalog.query("SELECT path, base_model_id FROM adapters WHERE adapter_id = ?", [event.adapter_id])
    if not found:
        return None, f"the promoted adapter {event.adapter_id} is not in the catalog"
    if found[0]["base_model_id"] != adapter["base_model_id"]:
        return None, f"the promoted adapter {event.adapter_id} adapts another base model"
    folder = ws.artifact_path(found[0]["path"])
    load_manifest(folder)
    return Champion(adapter_id=event.adapter_id, path=str(folder / ADAPTER_SUBDIR)), None


def _general_set(config: Any) -> Any:
    """The general-capability check's set: the eval config's file, or the one shipped in the package."""
    from eval.general import GeneralSetError, load_general_set

    if not config.general.enabled:
        return None
    try:
        return load_general_set(config.general.path, config.general.limit)
    except GeneralSetError as exc:
        raise UsageError(f"{exc} (general.path in the eval config)") from None


def _task_for(train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], task_cls: Any, kinds: Any) -> Any:
    """Classification when the eval rows carry labels (or every training record does), else exact match.

    The label set is every label of the eval rows plus every training label; where training records come from
    a chat file without a label column, their responses are the labels (the eval labels say the task is one).
    """
    if all(r["label"] is None for r in eval_rows) and any(r["label"] is None for r in train_rows):
        return task_cls(kind=kinds.EXACT_MATCH)
    # a record first ingested from a chat file has no label even where a later labelled source repeats it
    labels = {r["label"] if r["label"] is not None else r["messages"][-1]["content"] for r in train_rows + eval_rows}
    return task_cls(kind=kinds.CLASSIFICATION, labels=sorted(labels))


def _register_eval(
    ws: Workspace, eval_id: str, adapter: dict[str, Any], set_name: str, path: Path, payload: dict[str, Any]
) -> None:
    predictions = pq.read_table(path / "predictions.parquet")
    with ws.catalog.write() as con:
        if con.execute("SELECT 1 FROM eval_runs WHERE eval_id = ?", [eval_id]).fetchone():
            return
        con.execute(
            "INSERT INTO eval_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                eval_id,
                adapter["adapter_id"],
                adapter["snapshot_id"],
                set_name,
                payload["eval_set_hash"],
                payload["metric"],
                payload["adapter"],
                canonical_json(payload["baselines"]),
                payload["verdict"],
                payload["ci_low"],
                payload["ci_high"],
                payload["reason"],
                canonical_json(payload["thresholds"]),
                ws.stored_path(path),
                utcnow(),
            ],
        )
        con.register("predictions", predictions)
        score = "score" if "score" in predictions.column_names else "NULL"  # reports written before scores
        con.execute(
            "INSERT INTO eval_results (eval_id, system, example_index, record_id, prompt, prediction, reference, "
            f"correct, score) SELECT ?, system, example_index, record_id, prompt, prediction, reference, correct, "
            f"{score} FROM predictions",
            [eval_id],
        )
        con.unregister("predictions")
        _register_gate_evidence(con, eval_id, payload)
        add_lineage_edge(con, eval_id, "eval", adapter["adapter_id"], "adapter", "evaluates")
        add_lineage_edge(con, eval_id, "eval", adapter["snapshot_id"], "snapshot", "trained_data")
        batches = con.execute(
            "SELECT batch_id FROM ingest_batches WHERE purpose = 'eval' AND eval_set = ?", [set_name]
        ).fetchall()
        for (batch_id,) in batches:
            add_lineage_edge(con, eval_id, "eval", batch_id, "batch", "eval_set")


def _register_gate_evidence(con: Any, eval_id: str, payload: dict[str, Any]) -> None:
    """The rows of eval_comparisons and eval_checks (0007) for one eval report."""
    for name, c in payload.get("comparisons", {}).items():
        con.execute(
            "INSERT INTO eval_comparisons VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                eval_id,
                name,
                c.get("adapter_id"),
                c["baseline_score"],
                c["diff"],
                c["ci_low"],
                c["ci_high"],
                c["p_value"],
                c["test"],
                name == payload["strongest_baseline"],
            ],
        )
    regression = payload.get("regression") or {"status": "skipped", "reason": "not run (report predates the check)"}
    items = payload.get("contaminated_items", [])
    con.execute(
        "INSERT INTO eval_checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            eval_id,
            payload["task"]["kind"],
            payload["n_examples"],
            payload["strongest_baseline"],
            payload["p_value"],
            payload["test"],
            payload.get("champion_adapter_id"),
            "contaminated" if payload["contaminated"] else "clean",
            len(items),
            payload.get("contamination_method", "exact_prompt"),
            regression["status"],
            regression["reason"],
            regression.get("general_set"),
            regression.get("general_set_hash"),
            regression.get("n_prompts"),
            regression.get("base_loss"),
            regression.get("adapter_loss"),
            regression.get("relative_change"),
            regression.get("max_regression"),
        ],
    )
