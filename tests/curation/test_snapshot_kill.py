"""Killing `refinery snapshot create` at any stage leaves no snapshot or a complete one; a rerun completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.snapshot import PAUSE_ENV, STAGE_LOG_ENV, load_snapshot
from schemas.catalog import Catalog
from schemas.manifest import load_manifest
from tests.curation.snapshot_support import build_corpus

REPO = Path(__file__).resolve().parents[2]


def _create(ws: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    # through main() (not `-m refinery.cli`, which would load refinery.cli twice and lose --workspace)
    cmd = [
        sys.executable,
        "-c",
        "from refinery.cli import main; main()",
        "--workspace",
        str(ws),
        "--quiet",
        "snapshot",
        "create",
        "--json",
    ]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["selected", "split_written", "staged", "renamed", "registering"])
def test_kill_at_stage_leaves_nothing_or_a_complete_snapshot(tmp_path: Path, workspace: Path, stage: str) -> None:
    catalog = Catalog(workspace / "catalog.duckdb")
    catalog.migrate()
    build_corpus(catalog, tmp_path)
    log = tmp_path / "stages.log"
    proc = _create(workspace, {PAUSE_ENV: stage, STAGE_LOG_ENV: str(log)})
    deadline = time.monotonic() + 120
    while not (log.exists() and stage in log.read_text().split()):
        assert proc.poll() is None, "create finished before reaching the stage"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    snaps = workspace / "snapshots"
    assert catalog.scalar("SELECT count(*) FROM snapshots") == 0  # every stage is before the commit
    assert catalog.scalar("SELECT count(*) FROM snapshot_members") == 0
    finals = [p for p in snaps.iterdir() if not p.name.startswith(".")] if snaps.exists() else []
    for folder in finals:  # a folder under its final name is complete: it verifies against its manifest
        load_manifest(folder)
    assert bool(finals) == (stage in ("renamed", "registering"))

    rerun = _create(workspace, {})
    out, _ = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, out
    snapshot_id = catalog.scalar("SELECT snapshot_id FROM snapshots")
    assert load_snapshot(catalog, snapshot_id).manifest.counts["train"] > 0
    assert [p.name for p in snaps.iterdir()] == [snapshot_id]  # staging leftovers removed
    members = catalog.scalar("SELECT count(*) FROM snapshot_members WHERE snapshot_id = ?", [snapshot_id])
    row = catalog.query("SELECT train + validation + test AS n FROM snapshots")[0]
    assert members == row["n"]
