"""`refinery audit` on a real workspace: clean, then tampered, deleted, orphaned and dangling artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from safetensors.numpy import save_file
from typer.testing import CliRunner

from curation.snapshot import create_snapshot
from refinery.cli import app
from schemas.artifact_paths import to_stored
from schemas.atomic import atomic_directory
from schemas.catalog import Catalog, add_lineage_edge, utcnow
from schemas.manifest import manifest_sha256, new_manifest, write_manifest
from tests.curation.snapshot_support import build_corpus


def _audit(ws: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["--workspace", str(ws), "--quiet", "audit", "--json"])
    return result.exit_code, json.loads(result.stdout)


def _fake_adapter(ws: Path, catalog: Catalog, snapshot_id: str) -> Path:
    """A small adapter artifact (safetensors weights + manifest) registered like train_adapter registers one
    (paths relative to the workspace root)."""
    final = ws / "adapters" / "adp_0123456789abcdef"
    with atomic_directory(final) as staging:
        (staging / "adapter").mkdir()
        save_file({"lora_A": np.ones((4, 8), dtype=np.float32)}, str(staging / "adapter" / "adapter_model.safetensors"))
        write_manifest(staging, new_manifest("adapter", final.name, parents=[snapshot_id]))
    model_dir = ws / "models" / "tiny"
    model_dir.mkdir(parents=True)
    with catalog.write() as con:
        model_row = ["base_tiny", "test", to_stored(model_dir, ws), "x", utcnow()]
        con.execute("INSERT INTO base_models VALUES (?, ?, ?, ?, ?)", model_row)
        con.execute(
            "INSERT INTO adapters VALUES (?, ?, 'base_tiny', ?, ?, '{}', NULL, NULL, ?)",
            [final.name, snapshot_id, to_stored(final, ws), manifest_sha256(final), utcnow()],
        )
    return final


def test_audit_names_every_tampered_missing_orphaned_and_dangling_artifact(tmp_path: Path, workspace: Path) -> None:
    catalog = Catalog(workspace / "catalog.duckdb")
    catalog.migrate()
    build_corpus(catalog, tmp_path)
    snap = create_snapshot(catalog, workspace / "snapshots")
    adapter = _fake_adapter(workspace, catalog, snap.snapshot_id)
    code, report = _audit(workspace)
    assert code == 0 and report["ok"] and report["checked"]["snapshots"] == 1 and report["checked"]["adapters"] == 1

    table = pq.read_table(snap.path / "train.parquet")  # edit a Parquet file
    pq.write_table(table.slice(1), snap.path / "train.parquet")
    weights = adapter / "adapter" / "adapter_model.safetensors"  # change one adapter weight
    save_file({"lora_A": np.ones((4, 8), dtype=np.float32) * 1.0001}, str(weights))
    code, report = _audit(workspace)
    found = {(p["kind"], p["path"]) for p in report["problems"]}
    assert code == 1 and ("tampered", str(snap.path / "train.parquet")) in found and ("tampered", str(weights)) in found

    (adapter / "manifest.json").unlink()  # delete a manifest
    orphan = workspace / "snapshots" / "snap_ffffffffffffffff"
    orphan.mkdir()
    with catalog.write() as con:
        add_lineage_edge(con, snap.snapshot_id, "snapshot", "scan_doesnotexist", "scan", "deduplicated_by")
    code, report = _audit(workspace)
    kinds = {(p["kind"], p["artifact"]) for p in report["problems"]}
    assert code == 1
    assert ("missing", f"adapter {adapter.name}") in kinds
    assert ("orphaned", f"snapshots {orphan.name}") in kinds
    assert any(k == "dangling" and "scan_doesnotexist" in a for k, a in kinds)
    result = CliRunner().invoke(app, ["--workspace", str(workspace), "--quiet", "audit"])
    assert result.exit_code == 1 and adapter.name in result.stderr


def test_audit_of_a_copied_workspace_checks_the_copy_not_the_original(tmp_path: Path, workspace: Path) -> None:
    """Catalog paths resolve against the workspace the audit runs on: the copy's files are the ones re-hashed, and
    a folder missing from the copy is missing even while the original still has it."""
    catalog = Catalog(workspace / "catalog.duckdb")
    catalog.migrate()
    build_corpus(catalog, tmp_path)
    snap = create_snapshot(catalog, workspace / "snapshots")
    _fake_adapter(workspace, catalog, snap.snapshot_id)
    assert catalog.scalar("SELECT path FROM snapshots") == f"snapshots/{snap.snapshot_id}"
    assert catalog.scalar("SELECT path FROM base_models") == "models/tiny"
    copy = tmp_path / "elsewhere" / "ws-copy"
    shutil.copytree(workspace, copy)
    code, report = _audit(copy)
    assert code == 0 and report["ok"] and report["checked"]["snapshots"] == report["checked"]["adapters"] == 1

    table = pq.read_table(copy / "snapshots" / snap.snapshot_id / "train.parquet")
    pq.write_table(table.slice(1), copy / "snapshots" / snap.snapshot_id / "train.parquet")
    shutil.rmtree(copy / "adapters")
    code, report = _audit(copy)
    found = {(p["kind"], p["path"]) for p in report["problems"]}
    assert code == 1 and found == {
        ("tampered", str(copy / "snapshots" / snap.snapshot_id / "train.parquet")),
        ("missing", str(copy / "adapters" / "adp_0123456789abcdef")),
    }
    code, report = _audit(workspace)
    assert code == 0 and report["ok"]  # the original was not touched
