"""`refinery scan --executor ray` against a real local Ray cluster (`ray start --head`, 2 CPUs, started and stopped
here): the same findings, clusters, kept members and pairs as the local executor on Toolformer + banking77 (real
data, the default scan: embedding checks included), with the stages that ran on Ray in the scan summary; a worker
killed mid-stage is retried and changes nothing; a task that loses its worker more often than allowed fails the scan
with one line and leaves nothing of it; a bad executor setting is one line before any work."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from curation.checks import DEFAULT_CHECKS
from schemas.catalog import Catalog
from tests.curation.ingest_support import write_synthetic_families
from tests.support.cli import invoke_cli, run_cli
from tests.support.ray_cluster import local_ray_cluster

#: What a scan stores, without the scan id (the two runs are compared row by row).
TABLES = {
    "findings": "SELECT check_name, record_id, score, flagged, reason, details_json FROM findings ORDER BY ALL",
    "duplicate_members": "SELECT * EXCLUDE (scan_id) FROM duplicate_members ORDER BY ALL",
    "finding_pairs": "SELECT * EXCLUDE (scan_id) FROM finding_pairs ORDER BY ALL",
    "contamination_hits": "SELECT * EXCLUDE (scan_id) FROM contamination_hits ORDER BY ALL",
}
CHECKS = "exact,near_dup,pii,truncated,repetitive"


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    with local_ray_cluster(num_cpus=2) as address:
        yield address


def stored(ws: Path) -> dict[str, list[tuple[Any, ...]]]:
    catalog = Catalog(ws / "catalog.duckdb")
    with catalog.read() as con:
        return {name: con.execute(sql).fetchall() for name, sql in TABLES.items()}


def ray_config(folder: Path, **executor: Any) -> str:
    path = folder / "ray.json"
    path.write_text(json.dumps({"executor": executor}), encoding="utf-8")
    return str(path)


def stages_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Stage -> what the executor measured, from every check's summary."""
    return {
        stage: stats
        for check in result.values()
        if isinstance(check, dict) and "executor" in check
        for stage, stats in check["executor"]["stages"].items()
    }


@pytest.mark.realdata
@pytest.mark.slow
def test_toolformer_and_banking77_default_scan_on_ray_equals_the_local_scan(
    tmp_path: Path, shared_data: Path, ray_address: str
) -> None:
    local, distributed = tmp_path / "local", tmp_path / "ray"
    for ws in (local, distributed):
        ws.mkdir()
        run_cli(ws, "ingest", str(shared_data / "gpteacher_toolformer/toolformer-dedupe-only.json"))
        run_cli(ws, "ingest", str(shared_data / "banking77/train.csv"), "--format", "csv", "--map", "text=user",
                "--map", "category=assistant", "--template", "intent")  # fmt: skip
    expected = run_cli(local, "scan")
    config = ray_config(tmp_path, shard_records=2000)
    result = run_cli(distributed, "scan", "--executor", "ray", "--ray-address", ray_address, "--config", config)

    assert result["scan_id"] == expected["scan_id"]  # where it ran is not part of what the scan is
    a, b = stored(local), stored(distributed)
    assert len(a["findings"]) == result["records"] * len(DEFAULT_CHECKS) and len(a["duplicate_members"]) > 1000
    assert len(a["finding_pairs"]) > 1000
    for table in TABLES:
        assert a[table] == b[table], table
    stages = stages_of(result)
    shards = math.ceil(result["records"] / 2000)
    for stage in ("near_dup:sketch", "empty_response", "truncated", "repetitive", "refusal", "pii"):
        assert stages[stage]["tasks"] == shards, stage
    # the LSH band join ran as a shuffle: band keys cut on the workers, joined by reduce tasks; then the join itself
    assert stages["near_dup:bands:map"]["tasks"] >= shards - 1 and stages["near_dup:bands:reduce"]["tasks"] >= 1
    assert stages["near_dup:join"]["tasks"] >= 1
    assert stages["embed:prompt"]["tasks"] >= 2 and stages["embed:response"]["tasks"] >= 1
    assert all(s["workers"] >= 1 and 50 < s["worker_peak_rss_mb"] < 4000 for s in stages.values())
    assert all(5 < s["worker_peak_private_mb"] < 4000 for s in stages.values())  # a task's own memory, measured
    assert not stages_of(expected)  # the local scan says nothing of an executor


@pytest.fixture
def twin_workspaces(tmp_path: Path) -> tuple[Path, Path]:
    """Two workspaces with the same synthetic corpus; the first scanned locally."""
    data = write_synthetic_families(tmp_path)
    local, distributed = tmp_path / "local", tmp_path / "ray"
    for ws in (local, distributed):
        ws.mkdir()
        run_cli(ws, "ingest", str(data))
    run_cli(local, "scan", "--checks", CHECKS)
    return local, distributed


def kill_once(monkeypatch: pytest.MonkeyPatch, folder: Path, task: str, max_retries: int) -> str:
    """Have the worker of ``task`` (STAGE:SHARD) die the first time it runs; the config of a scan in shards of 200
    with ``max_retries`` (its path)."""
    monkeypatch.setenv("REFINERY_FAULT_KILL_WORKER", task)
    monkeypatch.setenv("REFINERY_FAULT_DIR", str(folder))
    return ray_config(folder, shard_records=200, max_retries=max_retries)


@pytest.mark.parametrize(
    ("stage", "shard"),
    [("near_dup:sketch", 2), ("near_dup:bands:map", 1), ("near_dup:bands:reduce", 0)],
    ids=["sketch", "band-shuffle-map", "band-shuffle-reduce"],
)
def test_a_worker_killed_mid_stage_is_retried_and_changes_nothing(
    tmp_path: Path,
    twin_workspaces: tuple[Path, Path],
    ray_address: str,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
    shard: int,
) -> None:
    local, distributed = twin_workspaces
    config = kill_once(monkeypatch, tmp_path, f"{stage}:{shard}", max_retries=2)
    result = run_cli(distributed, "scan", "--checks", CHECKS, "--executor", "ray", "--ray-address", ray_address,
                     "--config", config)  # fmt: skip
    marker = tmp_path / f"refinery-killed-{stage}-{shard}"
    assert marker.is_file() and int(marker.read_text()) > 0  # the worker of that shard did die (its pid)
    stages = stages_of(result)
    assert stages["near_dup:sketch"]["tasks"] == 6  # 1,200 records in shards of 200, each once
    assert stages["near_dup:bands:map"]["tasks"] == 6 and stages["near_dup:bands:reduce"]["tasks"] == 1
    assert stored(local) == stored(distributed)
    assert result["pii"]["flagged"] == 6 and result["truncated"]["flagged"] >= 8
    # the shards' summaries joined by each check's rules equal the summary of one pass over every record
    local_summary = json.loads(Catalog(local / "catalog.duckdb").scalar("SELECT summary_json FROM scans"))
    timing = {"executor", "wall_seconds", "peak_private_mb"}
    for check in ("pii", "truncated", "repetitive"):
        joined = {k: v for k, v in result[check].items() if k not in timing}
        assert joined == {k: v for k, v in local_summary[check].items() if k not in timing}, check


def test_a_task_that_keeps_losing_its_worker_fails_the_scan_and_leaves_nothing(
    tmp_path: Path, twin_workspaces: tuple[Path, Path], ray_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, distributed = twin_workspaces
    config = kill_once(monkeypatch, tmp_path, "pii:1", max_retries=0)
    args = ("scan", "--checks", CHECKS, "--executor", "ray", "--ray-address", ray_address, "--config", config)
    failed = invoke_cli(distributed, *args, "--json")
    assert failed.exit_code == 1
    error = json.loads(failed.stdout)["error"]
    assert "\n" not in error and error.startswith("scan stage pii: shard 1 lost its worker on each of its 1 tries")
    catalog = Catalog(distributed / "catalog.duckdb")
    for table in ("scans", *TABLES):
        assert catalog.scalar(f"SELECT count(*) FROM {table}") == 0, table  # nothing half-written
    monkeypatch.delenv("REFINERY_FAULT_KILL_WORKER")
    rerun = run_cli(distributed, *args)  # the same scan, the fault gone: complete, and equal to the local one
    assert rerun["reused"] is False and stored(local) == stored(distributed)


def test_executor_settings_are_checked_before_any_work(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    run_cli(ws, "ingest", str(write_synthetic_families(tmp_path, n_bases=5)))
    wrong_kind = invoke_cli(ws, "scan", "--executor", "spark", "--json")
    assert wrong_kind.exit_code == 2 and "executor: kind: Input should be 'local' or 'ray'" in wrong_kind.stdout
    nobody = invoke_cli(ws, "scan", "--checks", "exact", "--ray-address", "127.0.0.1:1", "--json")
    assert nobody.exit_code == 2
    assert json.loads(nobody.stdout)["error"].startswith("cannot reach Ray at 127.0.0.1:1: nothing answers there")
    bad = invoke_cli(ws, "scan", "--config", ray_config(tmp_path, kind="ray", shard_records=0), "--json")
    assert bad.exit_code == 2 and "executor: shard_records: Input should be greater than or equal to 1" in bad.stdout
    assert Catalog(ws / "catalog.duckdb").scalar("SELECT count(*) FROM scans") == 0
