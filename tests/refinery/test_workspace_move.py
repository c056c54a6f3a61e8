"""A workspace is relocatable: copied elsewhere (the original deleted) or restored from `refinery backup` into a new
folder, it audits clean and its lineage resolves to the new place, because the catalog stores artifact paths
relative to the workspace root. Catalogs written before that (absolute paths) keep working in place and after a
move. `refinery restore` refuses altered, damaged and unsafe archives without writing DEST.

The workspace is made through the real CLI: ingest, scan, snapshot, train (the tiny model, kept inside the
workspace so its base model path moves too), eval and a forced promotion."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import duckdb
import pytest

from schemas.artifact_paths import resolve_stored, to_stored
from tests.support.cli import invoke_cli, run_cli

LABELS = ["alpha", "beta", "gamma"]
#: A small eval: two systems, short answers, 8 general prompts (seconds on the tiny model).
EVAL_CONFIG = "systems: [adapter, base_zero_shot]\nmax_new_tokens: 4\ncpu_threads: 1\ngeneral: {limit: 8}\n"


def _chat(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("move")
    ws = root / "ws"
    base = ws / "models" / "tiny"  # inside the workspace: its catalog path is relative too
    shutil.copytree(tiny_model_dir, base)
    train = "".join(_chat(f"{LABELS[i % 3]} case {i}", LABELS[i % 3]) + "\n" for i in range(36))
    (root / "train.jsonl").write_text(train)
    heldout = "".join(_chat(f"{LABELS[i % 3]} query {i}?", LABELS[i % 3]) + "\n" for i in range(6))
    (root / "heldout.jsonl").write_text(heldout)
    run_cli(ws, "ingest", str(root / "train.jsonl"))
    run_cli(ws, "ingest", str(root / "heldout.jsonl"), "--eval-set", "heldout")
    run_cli(ws, "scan", "--checks", "exact")
    snap = run_cli(ws, "snapshot", "create")
    (root / "train.yaml").write_text("batch_size: 8\n")
    adapter = run_cli(
        ws, "train", "--snapshot", snap["snapshot_id"], "--base-model", str(base), "--config", str(root / "train.yaml"),
        "--max-steps", "2",
    )  # fmt: skip
    (root / "eval.yaml").write_text(EVAL_CONFIG)
    evaluated = _eval(ws, root, adapter["adapter_id"])
    assert evaluated.exit_code in (0, 1), evaluated.output + (evaluated.stderr or "")
    promotion = run_cli(ws, "promote", adapter["adapter_id"], "--force", "--reason", "move test")
    return {
        "root": root,
        "ws": ws,
        "snapshot_id": snap["snapshot_id"],
        "adapter_id": adapter["adapter_id"],
        "eval_id": json.loads(evaluated.stdout)["eval_id"],
        "event_id": promotion["event_id"],
    }


def _eval(ws: Path, root: Path, adapter_id: str) -> Any:
    """`refinery eval` of the adapter on the held-out set: exit 1 for a failed verdict, 0 for a pass."""
    return invoke_cli(
        ws, "eval", "--adapter", adapter_id, "--eval-set", "heldout", "--config", str(root / "eval.yaml"), "--json"
    )


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


def _moved(built: dict[str, Any], name: str) -> Path:
    """A copy of the workspace moved to ``name``: copied once, then copied again and the first copy deleted."""
    original = _copy(built["ws"], built["root"] / f"{name}-original")
    moved = _copy(original, built["root"] / name)
    shutil.rmtree(original)
    return moved


def _assert_clean_audit_and_lineage(ws: Path, built: dict[str, Any]) -> None:
    result = invoke_cli(ws, "audit", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["ok"], report["problems"]
    kinds = ("snapshots", "adapters", "evals", "base_models")
    assert [report["checked"][k] for k in kinds] == [1, 1, 1, 1]
    tree = run_cli(ws, "lineage", built["event_id"])
    adapter = tree["parents"][0]
    snapshot = adapter["parents"][0]
    assert (adapter["id"], snapshot["id"]) == (built["adapter_id"], built["snapshot_id"])
    assert Path(adapter["path"]) == ws / "adapters" / built["adapter_id"]
    assert Path(snapshot["path"]) == ws / "snapshots" / built["snapshot_id"]
    verified = run_cli(ws, "snapshot", "verify", built["snapshot_id"])
    assert verified["ok"] is True


def _paths(ws: Path) -> dict[str, str]:
    sql = (
        "SELECT 'snapshot' AS kind, path FROM snapshots UNION ALL SELECT 'adapter', path FROM adapters "
        "UNION ALL SELECT 'eval', path FROM eval_runs UNION ALL SELECT 'base_model', path FROM base_models"
    )
    return {r["kind"]: r["path"] for r in run_cli(ws, "sql", sql)}


# ------------------------------------------------------------------------------------------ paths, unit


def test_stored_paths_are_relative_inside_the_root_and_absolute_outside(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "models" / "tiny").mkdir(parents=True)
    assert to_stored(root / "snapshots" / "snap_1", root) == "snapshots/snap_1"
    assert to_stored(tmp_path / "elsewhere" / "model", root) == str(tmp_path / "elsewhere" / "model")
    assert resolve_stored("snapshots/snap_1", root) == root / "snapshots" / "snap_1"
    assert resolve_stored(str(tmp_path / "elsewhere"), root) == tmp_path / "elsewhere"  # outside: as stored
    # an absolute path from before 0008, written where the workspace used to be: found again by its tail
    assert resolve_stored("/old/place/models/tiny", root) == root / "models" / "tiny"
    assert resolve_stored("/old/place/models/gone", root) == Path("/old/place/models/gone")  # nothing there: as is


# ------------------------------------------------------------------------------------------ a real workspace


@pytest.mark.slow
def test_the_catalog_stores_artifact_paths_relative_to_the_workspace(built: dict[str, Any]) -> None:
    assert _paths(built["ws"]) == {
        "snapshot": f"snapshots/{built['snapshot_id']}",
        "adapter": f"adapters/{built['adapter_id']}",
        "eval": f"evals/{built['eval_id']}",
        "base_model": "models/tiny",
    }
    (source,) = run_cli(built["ws"], "sql", "SELECT DISTINCT file FROM source_rows ORDER BY 1 LIMIT 1")
    assert Path(source["file"]).is_absolute()  # the user's files outside the workspace keep their absolute path


@pytest.mark.slow
def test_a_copied_workspace_audits_clean_after_the_original_is_gone(built: dict[str, Any]) -> None:
    moved = _moved(built, "copied")
    _assert_clean_audit_and_lineage(moved, built)
    # the eval rerun finds its adapter, base model and eval folder in the new place (the run is reused)
    again = _eval(moved, built["root"], built["adapter_id"])
    assert again.exit_code in (0, 1) and json.loads(again.stdout)["eval_id"] == built["eval_id"], again.stderr


@pytest.mark.slow
def test_backup_then_restore_into_a_new_folder_audits_clean(built: dict[str, Any], tmp_path: Path) -> None:
    archive = tmp_path / "backups" / "ws.tar.gz"
    archive.parent.mkdir()
    made = run_cli(built["ws"], "backup", str(archive))
    assert (made["snapshots"], made["adapters"], made["evals"], made["base_models"]) == (1, 1, 1, 1)
    assert made["outside_workspace"] == [] and archive.is_file()
    assert sorted(p.name for p in archive.parent.iterdir()) == ["ws.tar.gz"]  # no temporary file left beside it
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
    assert names[-1] == "refinery-backup.json" and "catalog.duckdb" in names and len(names) == made["files"] + 1
    assert not any(n.startswith(("checkpoints/", "embeddings/", "models/hashes/")) for n in names)  # caches stay out

    again = invoke_cli(built["ws"], "backup", str(archive))
    assert again.exit_code == 2 and "already exists" in again.stderr

    dest = tmp_path / "restored"
    restored = run_cli(tmp_path, "restore", str(archive), str(dest))
    assert restored["workspace"] == str(dest) and restored["files"] == made["files"]
    _assert_clean_audit_and_lineage(dest, built)
    assert _paths(dest) == _paths(built["ws"])

    refused = invoke_cli(tmp_path, "restore", str(archive), str(dest))  # not empty now
    assert refused.exit_code == 2 and "is not an empty folder" in refused.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(tmp_path, "restore", str(archive), str(empty))["files"] == made["files"]


def _flip_in_member(archive: Path, member: str, target: Path) -> None:
    """``archive`` rewritten to ``target`` with one byte of ``member``'s content flipped (valid gzip and tar)."""
    data = bytearray(gzip.decompress(archive.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        info = tar.getmember(member)
    data[info.offset_data + info.size // 2] ^= 0x01
    target.write_bytes(gzip.compress(bytes(data)))


def _assert_refused(result: Any, dest: Path, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(n in lines[0] for n in needles), result.stderr
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.")]  # no staging left


@pytest.mark.slow
def test_restore_refuses_an_altered_or_damaged_archive_and_writes_nothing(
    built: dict[str, Any], tmp_path: Path
) -> None:
    archive = tmp_path / "ws.tar.gz"
    run_cli(built["ws"], "backup", str(archive))
    dest = tmp_path / "dest"
    for member in ("catalog.duckdb", f"snapshots/{built['snapshot_id']}/train.parquet"):
        tampered = tmp_path / "tampered.tar.gz"
        _flip_in_member(archive, member, tampered)
        result = invoke_cli(tmp_path, "restore", str(tampered), str(dest))
        _assert_refused(result, dest, member, "differs from the backup manifest")

    raw = bytearray(archive.read_bytes())  # a byte flipped in the compressed stream itself
    raw[len(raw) // 2] ^= 0x01
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(bytes(raw))
    _assert_refused(invoke_cli(tmp_path, "restore", str(damaged), str(dest)), dest, "damaged.tar.gz")

    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(archive.read_bytes())[: 64 * 1024]))
    _assert_refused(invoke_cli(tmp_path, "restore", str(cut), str(dest)), dest, "cut.tar.gz")


def _tar_with(path: Path, entries: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = 1 if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        (_entry("../escaped.txt"), "path with '..'"),
        (_entry("snapshots/../../escaped.txt"), "path with '..'"),
        (_entry("/tmp/refinery-escaped.txt"), "absolute path"),
        (_entry("catalog.duckdb", tarfile.SYMTYPE, link="/etc/passwd"), "not a plain file or folder"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink"],
)
def test_restore_refuses_unsafe_members(tmp_path: Path, entry: tarfile.TarInfo, needle: str) -> None:
    archive = _tar_with(tmp_path / "evil.tar.gz", [_entry("catalog.duckdb"), entry])
    dest = tmp_path / "out" / "dest"
    result = invoke_cli(tmp_path, "restore", str(archive), str(dest))
    _assert_refused(result, dest, "refused member", needle)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "escaped.txt").exists()


def test_restore_refuses_an_archive_without_a_backup_manifest(tmp_path: Path) -> None:
    archive = _tar_with(tmp_path / "plain.tar.gz", [_entry("catalog.duckdb")])
    dest = tmp_path / "dest"
    _assert_refused(invoke_cli(tmp_path, "restore", str(archive), str(dest)), dest, "refinery-backup.json")


# ------------------------------------------------------------------------------------------ legacy catalogs


def _as_legacy(ws: Path) -> None:
    """Rewrite the catalog as Refinery wrote it before migration 0008: absolute paths, and 0008 not applied (the
    later migrations' tables stay, recorded as applied: only 0008 runs again)."""
    con = duckdb.connect(str(ws / "catalog.duckdb"))
    tables = {"snapshots": "snapshot_id", "adapters": "adapter_id", "eval_runs": "eval_id"}
    tables["base_models"] = "base_model_id"
    try:
        for table, id_col in tables.items():
            for ident, stored in con.execute(f"SELECT {id_col}, path FROM {table}").fetchall():
                absolute = str(resolve_stored(stored, ws))
                con.execute(f"UPDATE {table} SET path = ? WHERE {id_col} = ?", [absolute, ident])
        con.execute("DELETE FROM schema_migrations WHERE version = 8")
    finally:
        con.close()


@pytest.mark.slow
def test_a_legacy_catalog_with_absolute_paths_audits_clean_in_place_and_after_a_move(built: dict[str, Any]) -> None:
    in_place = _copy(built["ws"], built["root"] / "legacy-in-place")
    _as_legacy(in_place)
    assert all(Path(p).is_absolute() for p in _paths(in_place).values())  # `sql` reads without migrating
    _assert_clean_audit_and_lineage(in_place, built)

    old = _copy(built["ws"], built["root"] / "legacy-old")
    _as_legacy(old)
    legacy_base = _paths(old)["base_model"]
    moved = _copy(old, built["root"] / "legacy-moved")
    shutil.rmtree(old)
    _assert_clean_audit_and_lineage(moved, built)
    after = _paths(moved)
    # 0008 made the id-named artifact folders relative; the base model keeps its old path, found by its tail
    assert (after["snapshot"], after["adapter"], after["eval"]) == (
        f"snapshots/{built['snapshot_id']}", f"adapters/{built['adapter_id']}", f"evals/{built['eval_id']}",
    )  # fmt: skip
    assert after["base_model"] == legacy_base and not Path(legacy_base).exists()
    again = _eval(moved, built["root"], built["adapter_id"])
    assert again.exit_code in (0, 1) and json.loads(again.stdout)["eval_id"] == built["eval_id"], again.stderr
