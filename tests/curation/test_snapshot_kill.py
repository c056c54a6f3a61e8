"""Killing `refinery snapshot create` at any stage leaves no snapshot or a complete one; a rerun completes it.

The fault is placed from the test, not from production code: the child wraps one function that
``curation.snapshot.create`` calls at the chosen point, prints a line there and blocks until the parent, on reading
that line, SIGKILLs it. So the kill lands at exactly that point, whatever the load on the machine:

- ``selected``: the records are selected, nothing is written yet;
- ``split_written``: the first split's Parquet file is in the staging folder;
- ``staged``: every file and the manifest are in the staging folder, not yet renamed;
- ``renamed``: the folder has its final name, the catalog knows nothing of it;
- ``registering``: inside the catalog transaction that registers it, before its commit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from curation.snapshot import load_snapshot
from schemas.catalog import Catalog
from schemas.manifest import load_manifest
from tests.curation.snapshot_support import build_corpus

REPO = Path(__file__).resolve().parents[2]
HOLDING = "holding"  # the line the child prints once it waits at the kill point

CHILD = textwrap.dedent(
    """
    import sys, time
    import curation.snapshot.create as create

    workspace, stage = sys.argv[1], sys.argv[2]

    def hold():
        print("%HOLDING% " + stage, flush=True)
        while True:  # the parent kills the process here: nothing after this point runs
            time.sleep(60)

    def after(function):
        def wrapped(*args, **kwargs):
            result = function(*args, **kwargs)
            hold()
            return result
        return wrapped

    def before(function):
        def wrapped(*args, **kwargs):
            hold()
        return wrapped

    wrap, name = {
        "selected": (after, "select_records"),
        "split_written": (after, "write_split"),
        "staged": (after, "write_manifest"),
        "renamed": (before, "load_manifest"),  # the first thing create does after the rename
        "registering": (before, "add_lineage_edge"),  # called inside the registering transaction
    }[stage]
    setattr(create, name, wrap(getattr(create, name)))
    sys.argv = ["refinery", "--workspace", workspace, "--quiet", "snapshot", "create", "--json"]
    from refinery.cli import main
    main()
    """
).replace("%HOLDING%", HOLDING)


def _create(ws: Path, stage: str | None) -> subprocess.Popen[str]:
    # through main() (not `-m refinery.cli`, which would load refinery.cli twice and lose --workspace)
    if stage is None:
        args = ["-c", "from refinery.cli import main; main()", "--workspace", str(ws), "--quiet", "snapshot", "create"]
    else:
        args = ["-c", CHILD, str(ws), stage]
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_at(ws: Path, stage: str) -> None:
    child = _create(ws, stage)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith(HOLDING):
            child.wait(timeout=60)
            pytest.fail(f"the child never reached {stage}: {line}{child.stderr.read() if child.stderr else ''}")
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["selected", "split_written", "staged", "renamed", "registering"])
def test_kill_at_stage_leaves_nothing_or_a_complete_snapshot(tmp_path: Path, workspace: Path, stage: str) -> None:
    catalog = Catalog(workspace / "catalog.duckdb")
    catalog.migrate()
    build_corpus(catalog, tmp_path)
    _kill_at(workspace, stage)

    snaps = workspace / "snapshots"
    assert catalog.scalar("SELECT count(*) FROM snapshots") == 0  # every stage is before the commit
    assert catalog.scalar("SELECT count(*) FROM snapshot_members") == 0
    finals = [p for p in snaps.iterdir() if not p.name.startswith(".")] if snaps.exists() else []
    for folder in finals:  # a folder under its final name is complete: it verifies against its manifest
        load_manifest(folder)
    assert bool(finals) == (stage in ("renamed", "registering"))

    rerun = _create(workspace, None)
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, out + err
    snapshot_id = catalog.scalar("SELECT snapshot_id FROM snapshots")
    assert load_snapshot(catalog, snapshot_id).manifest.counts["train"] > 0
    assert [p.name for p in snaps.iterdir()] == [snapshot_id]  # staging leftovers removed
    members = catalog.scalar("SELECT count(*) FROM snapshot_members WHERE snapshot_id = ?", [snapshot_id])
    row = catalog.query("SELECT train + validation + test AS n FROM snapshots")[0]
    assert members == row["n"]
