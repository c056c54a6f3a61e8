"""Killing `refinery snapshot create` at any stage leaves no snapshot or a complete one; a rerun completes it.

The fault is placed from the test, not from production code: the child wraps one function that
``curation.snapshot.create`` calls at the chosen point and holds there (``tests.support.kill``: it prints a line
and blocks until the parent, on reading that line, SIGKILLs it). So the kill lands at exactly that point, whatever
the load on the machine:

- ``selected``: the records are selected, nothing is written yet;
- ``split_written``: the first split's Parquet file is in the staging folder;
- ``staged``: every file and the manifest are in the staging folder, not yet renamed;
- ``renamed``: the folder has its final name, the catalog knows nothing of it;
- ``registering``: inside the catalog transaction that registers it, before its commit.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from curation.snapshot import load_snapshot
from schemas.catalog import Catalog
from schemas.manifest import load_manifest
from tests.curation.snapshot_support import build_corpus
from tests.support.kill import Child, kill_at_hold

CHILD = textwrap.dedent(
    """
    import sys
    import curation.snapshot.create as create
    from tests.support.kill import hold

    workspace, stage = sys.argv[1], sys.argv[2]

    def after(function):
        def wrapped(*args, **kwargs):
            result = function(*args, **kwargs)
            hold(stage)
            return result
        return wrapped

    def before(function):
        def wrapped(*args, **kwargs):
            hold(stage)
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
)


def _create(ws: Path, stage: str | None) -> Child:
    # through main() (not `-m refinery.cli`, which would load refinery.cli twice and lose --workspace)
    if stage is None:
        args = ["-c", "from refinery.cli import main; main()", "--workspace", str(ws), "--quiet", "snapshot", "create"]
    else:
        args = ["-c", CHILD, str(ws), stage]
    return Child(args)


def _kill_at(ws: Path, stage: str) -> None:
    with _create(ws, stage) as child:
        kill_at_hold(child, timeout=300)


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

    with _create(workspace, None) as rerun:
        code, out, err = rerun.finish(timeout=300)
    assert code == 0, out + err
    snapshot_id = catalog.scalar("SELECT snapshot_id FROM snapshots")
    assert load_snapshot(catalog, snapshot_id).manifest.counts["train"] > 0
    assert [p.name for p in snaps.iterdir()] == [snapshot_id]  # staging leftovers removed
    members = catalog.scalar("SELECT count(*) FROM snapshot_members WHERE snapshot_id = ?", [snapshot_id])
    row = catalog.query("SELECT train + validation + test AS n FROM snapshots")[0]
    assert members == row["n"]
