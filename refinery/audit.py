"""`refinery audit`: recompute the hash of every artifact and check the catalog's referential integrity.

Covered:
- snapshots, adapters and eval runs: every file re-hashed against the artifact's manifest (files changed,
  missing or added), the manifest itself against the catalog's ``manifest_sha256`` (snapshots, adapters) and
  the manifest's id against the catalog row; for eval runs, whose manifest hash the catalog does not keep, the
  verdict in the manifest and in report.json against the catalog's;
- base models: the folder exists; with ``deep`` the weight, config and tokenizer files are re-hashed against
  the catalog's ``sha256`` (seconds per GB, hence opt-in);
- catalog rows pointing at nothing: members and source rows without their record, adapters without their
  snapshot or base model, eval runs and promotions without their adapter, review decisions and record versions
  without their records, lineage edges whose child or parent does not exist;
- artifact folders under snapshots/, adapters/ and evals/ that no catalog row names (orphaned). Staging
  folders a killed run left behind are reported as notes, not problems (the next run of that step removes them).

Catalog paths are resolved against the workspace's root (``Workspace.artifact_path``), so a workspace that was
moved, copied or restored from a backup audits the folders it holds, not those of the place it came from.

Not covered: ingest batches (their rows live in the catalog, no batch files are stored; the source files'
sha256 are in ``ingest_batches.files_json``), checkpoints and exports (working files, not catalog artifacts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refinery.workspace import Workspace
from schemas.catalog import Catalog
from schemas.ids import sha256_file
from schemas.manifest import MANIFEST_NAME, Manifest, ManifestError, load_manifest, manifest_sha256, verify_files
from schemas.progress import progress


@dataclass(frozen=True)
class Problem:
    kind: str  # 'tampered', 'missing', 'orphaned', 'dangling'
    artifact: str  # '<kind> <id>' or '<table>'
    path: str | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "artifact": self.artifact, "path": self.path, "detail": self.detail}


@dataclass
class AuditReport:
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "problems": [p.to_json() for p in self.problems],
            "notes": self.notes,
        }


#: Artifact kinds with a folder + manifest: (catalog table, id column, catalog manifest hash column or None).
_ARTIFACTS = {
    "snapshot": ("snapshots", "snapshot_id", "manifest_sha256"),
    "adapter": ("adapters", "adapter_id", "manifest_sha256"),
    "eval": ("eval_runs", "eval_id", None),
}

#: Referential checks: (description, SQL returning offending rows as (id, detail)).
_REFERENCES = [
    ("snapshot_members", "SELECT snapshot_id || ' ' || record_id, 'member record is not in records' FROM snapshot_members WHERE record_id NOT IN (SELECT record_id FROM records)"),  # noqa: E501
    ("snapshot_members", "SELECT snapshot_id || ' ' || record_id, 'member of a snapshot not in snapshots' FROM snapshot_members WHERE snapshot_id NOT IN (SELECT snapshot_id FROM snapshots)"),  # noqa: E501
    ("source_rows", "SELECT file || ':' || row, 'source row of record ' || record_id || ', not in records' FROM source_rows WHERE record_id NOT IN (SELECT record_id FROM records)"),  # noqa: E501
    ("adapters", "SELECT adapter_id, 'snapshot ' || snapshot_id || ' is not in snapshots' FROM adapters WHERE snapshot_id NOT IN (SELECT snapshot_id FROM snapshots)"),  # noqa: E501
    ("adapters", "SELECT adapter_id, 'base model ' || base_model_id || ' is not in base_models' FROM adapters WHERE base_model_id NOT IN (SELECT base_model_id FROM base_models)"),  # noqa: E501
    ("eval_runs", "SELECT eval_id, 'adapter ' || adapter_id || ' is not in adapters' FROM eval_runs WHERE adapter_id NOT IN (SELECT adapter_id FROM adapters)"),  # noqa: E501
    ("promotions", "SELECT event_id, 'adapter ' || adapter_id || ' is not in adapters' FROM promotions WHERE adapter_id NOT IN (SELECT adapter_id FROM adapters)"),  # noqa: E501
    ("review_decisions", "SELECT decision_id, 'record ' || record_id || ' is not in records' FROM review_decisions WHERE record_id NOT IN (SELECT record_id FROM records)"),  # noqa: E501
    ("review_decisions", "SELECT decision_id, 'edited record ' || edited_record_id || ' is not in records' FROM review_decisions WHERE edited_record_id IS NOT NULL AND edited_record_id NOT IN (SELECT record_id FROM records)"),  # noqa: E501
    ("record_versions", "SELECT record_id, 'parent ' || parent_record_id || ' is not in records' FROM record_versions WHERE parent_record_id NOT IN (SELECT record_id FROM records) OR record_id NOT IN (SELECT record_id FROM records)"),  # noqa: E501
]  # fmt: skip

#: Lineage edge kinds -> the catalog column that holds ids of that kind.
_KIND_IDS = {
    "record": "SELECT record_id FROM records",
    "batch": "SELECT batch_id FROM ingest_batches",
    "scan": "SELECT scan_id FROM scans",
    "snapshot": "SELECT snapshot_id FROM snapshots",
    "adapter": "SELECT adapter_id FROM adapters",
    "eval": "SELECT eval_id FROM eval_runs",
    "base_model": "SELECT base_model_id FROM base_models",
    "promotion": "SELECT event_id FROM promotions",
    "review_round": "SELECT DISTINCT round_name FROM review_decisions WHERE round_name IS NOT NULL",
}


def audit(ws: Workspace, deep: bool = False) -> AuditReport:
    """Every tampered, missing, orphaned or dangling artifact of the workspace (see the module docstring)."""
    report = AuditReport()
    catalog = ws.catalog
    rows = {
        kind: catalog.query(
            f"SELECT {id_col} AS id, path{', ' + hash_col + ' AS manifest_sha256' if hash_col else ''} FROM {table}"
        )
        for kind, (table, id_col, hash_col) in _ARTIFACTS.items()
    }
    total = sum(len(r) for r in rows.values())
    with progress("audit: artifacts", total=total) as bar:
        for kind, found in rows.items():
            for row in found:
                _check_artifact(report, kind, row, ws.artifact_path(row["path"]))
                bar.advance()
            report.checked[f"{kind}s"] = len(found)
    _check_base_models(report, ws, deep)
    _check_eval_verdicts(report, ws, rows["eval"])
    _check_references(report, catalog)
    known = {ws.artifact_path(r["path"]).resolve() for found in rows.values() for r in found}
    for folder in (ws.snapshots_dir, ws.adapters_dir, ws.evals_dir):
        _check_orphans(report, folder, known)
    return report


def _check_artifact(report: AuditReport, kind: str, row: dict[str, Any], path: Path) -> None:
    name = f"{kind} {row['id']}"
    if not path.is_dir():
        report.problems.append(Problem("missing", name, str(path), "artifact folder is missing"))
        return
    if not (path / MANIFEST_NAME).is_file():
        report.problems.append(Problem("missing", name, str(path / MANIFEST_NAME), "manifest.json is missing"))
        return
    try:
        manifest: Manifest = load_manifest(path, verify=False)
    except ManifestError as exc:
        report.problems.append(Problem("tampered", name, str(path / MANIFEST_NAME), str(exc)))
        return
    expected = row.get("manifest_sha256")
    if expected and manifest_sha256(path) != expected:
        report.problems.append(
            Problem("tampered", name, str(path / MANIFEST_NAME), "manifest.json differs from the catalog's hash of it")
        )
    if manifest.id != row["id"]:
        report.problems.append(Problem("tampered", name, str(path), f"manifest names {manifest.id}"))
    for problem in verify_files(path, manifest):
        rel = problem.split(" ", 1)[0]
        kind_of_problem = "missing" if problem.endswith("is missing") else "tampered"
        report.problems.append(Problem(kind_of_problem, name, str(path / rel), problem))


def _check_eval_verdicts(report: AuditReport, ws: Workspace, evals: list[dict[str, Any]]) -> None:
    """The catalog keeps no hash of an eval's manifest: the verdict its manifest and report state must be the
    catalog's (an edited verdict with a matching manifest hash, or an edited manifest, shows here)."""
    verdicts = {r["eval_id"]: r["verdict"] for r in ws.catalog.query("SELECT eval_id, verdict FROM eval_runs")}
    for row in evals:
        path = ws.artifact_path(row["path"])
        try:
            stated = {
                MANIFEST_NAME: load_manifest(path, verify=False).extra.get("verdict"),
                "report.json": json.loads((path / "report.json").read_text(encoding="utf-8")).get("verdict"),
            }
        except (ManifestError, OSError, ValueError, AttributeError):
            continue  # missing or unreadable: reported with the artifact's files
        for file, verdict in stated.items():
            if verdict != verdicts.get(row["id"]):
                detail = f"{file} states the verdict {verdict!r}, the catalog {verdicts.get(row['id'])!r}"
                report.problems.append(Problem("tampered", f"eval {row['id']}", str(path / file), detail))


def _check_base_models(report: AuditReport, ws: Workspace, deep: bool) -> None:
    models = ws.catalog.query("SELECT base_model_id, path, sha256 FROM base_models")
    report.checked["base_models"] = len(models)
    for model in models:
        name = f"base_model {model['base_model_id']}"
        path = ws.artifact_path(model["path"])
        if not path.is_dir():
            report.problems.append(Problem("missing", name, str(path), "model folder is missing"))
            continue
        if not deep:
            continue
        from training.base_model import model_files, model_files_sha256

        digest = model_files_sha256({p.name: sha256_file(p) for p in model_files(path)})
        if digest != model["sha256"]:
            report.problems.append(Problem("tampered", name, str(path), "model files differ from the recorded sha256"))
    if models and not deep:
        report.notes.append("base model weights were not re-hashed (use --deep)")


def _check_references(report: AuditReport, catalog: Catalog) -> None:
    with catalog.read() as con:
        for table, sql in _REFERENCES:
            for ident, detail in con.execute(sql).fetchall():
                report.problems.append(Problem("dangling", f"{table} {ident}", None, detail))
        edges = con.execute(
            "SELECT child_id, child_kind, parent_id, parent_kind, relation FROM lineage_edges"
        ).fetchall()
        ids = {kind: {r[0] for r in con.execute(sql).fetchall()} for kind, sql in _KIND_IDS.items()}
    report.checked["lineage_edges"] = len(edges)
    for child, child_kind, parent, parent_kind, relation in edges:
        for ident, kind in ((child, child_kind), (parent, parent_kind)):
            if kind in ids and ident not in ids[kind]:
                report.problems.append(
                    Problem(
                        "dangling",
                        f"lineage_edges {child} -{relation}-> {parent}",
                        None,
                        f"{kind} {ident} is not in the catalog",
                    )
                )


def _check_orphans(report: AuditReport, folder: Path, known: set[Path]) -> None:
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        if ".staging-" in entry.name:
            report.notes.append(f"{entry}: staging folder of an interrupted run (removed by the next run)")
        elif entry.is_dir() and entry.resolve() not in known:
            report.problems.append(
                Problem("orphaned", f"{folder.name} {entry.name}", str(entry), "artifact folder not in the catalog")
            )
