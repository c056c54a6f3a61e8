"""`refinery snapshot ...`: create, list, show, verify, check, diff and export snapshots. Parsing and printing only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refinery.cli_context import cli_errors, current_workspace, load_config
from refinery.output import JsonOpt, emit_json, print_facts, print_snapshot, print_table, stdout

SNAPSHOT_GROUP = "snapshot"

snapshot_app = typer.Typer(help="Freeze approved records into versioned, content-hashed splits.", no_args_is_help=True)


@snapshot_app.command("create")
def snapshot_create(
    policy: Annotated[Path | None, typer.Option(help="YAML or JSON file with a snapshot policy.")] = None,
    parent: Annotated[str | None, typer.Option(help="The snapshot this one succeeds.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Freeze the approved, de-duplicated training records into train/validation/test Parquet + a manifest."""
    with cli_errors():
        from curation.snapshot import SnapshotPolicy, create_snapshot

        ws = current_workspace()
        spec = SnapshotPolicy.model_validate(load_config(policy)) if policy else SnapshotPolicy()
        result = create_snapshot(ws.catalog, ws.snapshots_dir, spec, parent=parent)
        if as_json:
            emit_json(result.to_json())
        else:
            print_snapshot(result.to_json(), title="snapshot")


@snapshot_app.command("list")
def snapshot_list(as_json: JsonOpt = False) -> None:
    """Every snapshot with its split sizes."""
    with cli_errors():
        rows = current_workspace().catalog.query(
            "SELECT snapshot_id, created_at, train, validation, test, parent_id, scan_id FROM snapshots "
            "ORDER BY created_at"
        )
        emit_json({"snapshots": rows}) if as_json else print_table(rows, title="snapshots")


@snapshot_app.command("show")
def snapshot_show(snapshot_id: str, as_json: JsonOpt = False) -> None:
    """A snapshot's manifest (verified)."""
    with cli_errors():
        from curation.snapshot import load_snapshot

        snap = load_snapshot(current_workspace().catalog, snapshot_id)
        manifest = snap.manifest.model_dump()
        if as_json:
            emit_json(manifest)
        else:
            print_facts({k: v for k, v in manifest.items() if k != "files"}, title=snapshot_id)
            print_table([{"file": k, "sha256": v} for k, v in manifest["files"].items()])


@snapshot_app.command("verify")
def snapshot_verify(snapshot_id: str, as_json: JsonOpt = False) -> None:
    """Recompute every file hash of a snapshot; exit 1 if anything changed."""
    with cli_errors():
        from curation.snapshot import load_snapshot

        snap = load_snapshot(current_workspace().catalog, snapshot_id)
        payload = {"snapshot_id": snapshot_id, "ok": True, "files": len(snap.manifest.files)}
        emit_json(payload) if as_json else stdout.print(f"{snapshot_id}: {payload['files']} files verified")


@snapshot_app.command("check")
def snapshot_check(
    snapshot_id: Annotated[str, typer.Argument(help="The frozen snapshot to compare against.")],
    batch: Annotated[str, typer.Option("--batch", "-b", help="Ingest batch whose records are checked.")],
    threshold: Annotated[float, typer.Option(help="Minimum exact Jaccard of a reported match.")] = 0.7,
    scope: Annotated[str, typer.Option(help="Compare the whole pair, the prompt alone or the response.")] = "pair",
    as_json: JsonOpt = False,
) -> None:
    """Which records of a new batch near-duplicate a member of a frozen snapshot (best match per record)."""
    with cli_errors():
        from curation.similarity.eval_match import ContaminationConfig, best_matches
        from curation.snapshot.contamination import check_against_snapshot as check

        config = ContaminationConfig.model_validate({"threshold": threshold, "scope": scope})
        matches = best_matches(check(current_workspace().catalog, snapshot_id, batch_id=batch, config=config))
        rows = [
            {"record_id": m.record_id, "matched_record_id": m.matched_record_id, "similarity": m.similarity,
             "split": m.matched_in}
            for m in matches.values()
        ]  # fmt: skip
        if as_json:
            emit_json({"snapshot_id": snapshot_id, "batch_id": batch, "matches": rows})
        else:
            print_table(rows, title=f"records of {batch} that near-duplicate members of {snapshot_id}")


@snapshot_app.command("diff")
def snapshot_diff(
    a: Annotated[str, typer.Argument(help="The earlier snapshot.")],
    b: Annotated[str, typer.Argument(help="The later snapshot.")],
    limit: Annotated[int, typer.Option(help="Rows shown per table in the terminal (--json has all).")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Records B adds, removes, changes (edited versions) and moves between splits relative to A, with reasons."""
    with cli_errors():
        from curation.snapshot.diff import diff_snapshots

        diff = diff_snapshots(current_workspace().catalog, a, b)
        if as_json:
            emit_json(diff)
            return
        print_facts({"a": a, "b": b, "policy_changed": diff["policy_changed"], **diff["summary"]}, title="diff")
        for kind in ("added", "removed", "changed", "moved"):
            if diff[kind]:
                print_table(diff[kind][:limit], title=f"{kind} ({len(diff[kind])})")


@snapshot_app.command("export")
def snapshot_export(
    snapshot_id: Annotated[str, typer.Argument(help="The snapshot to export (verified first).")],
    out: Annotated[Path, typer.Argument(help="New file (with --split) or folder to write; never overwritten.")],
    format: Annotated[str, typer.Option("--format", "-f", help="jsonl|hf|openai|sharegpt|alpaca")] = "jsonl",
    split: Annotated[str | None, typer.Option(help="Only this split: train, validation or test.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a snapshot as JSONL (jsonl, openai, sharegpt, alpaca) or a Hugging Face dataset (hf) that
    `refinery ingest` reads back to the same record ids."""
    with cli_errors():
        from curation.snapshot import load_snapshot
        from curation.snapshot.export import export_snapshot

        snap = load_snapshot(current_workspace().catalog, snapshot_id)
        result = export_snapshot(snap, format, out.resolve(), split)
        emit_json(result.to_json()) if as_json else print_facts(result.to_json(), title="export")


def register(app: typer.Typer) -> None:
    """Add the `snapshot` group to ``app`` (a second call changes nothing)."""
    if not any(group.name == SNAPSHOT_GROUP for group in app.registered_groups):
        app.add_typer(snapshot_app, name=SNAPSHOT_GROUP)
