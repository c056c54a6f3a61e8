"""`refinery audit` and `refinery forget`: integrity of the workspace, and takedowns. Parsing and printing only.

Exit codes: audit 0 when every artifact verifies and every reference resolves, 1 when anything is tampered,
missing, orphaned or dangling; forget 0 (the request is stored), 2 for an unknown record or source file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from refinery.cli_context import cli_errors, current_workspace
from refinery.errors import CheckFailed
from refinery.output import JsonOpt, emit_json, print_facts, print_table, stdout


def audit_command(
    deep: Annotated[bool, typer.Option("--deep", help="Also re-hash base model weights (seconds per GB).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash every snapshot, adapter and eval run, check catalog references; exit 1 naming any tampered,
    missing, orphaned or dangling artifact."""
    with cli_errors():
        from refinery.audit import audit

        report = audit(current_workspace(), deep=deep)
        if as_json:
            emit_json(report.to_json())
        else:
            print_facts(report.checked, title="audited")
            for note in report.notes:
                stdout.print(f"note: {note}", highlight=False)
            if report.problems:
                print_table([p.to_json() for p in report.problems], title="problems")
        if not report.ok:
            names = ", ".join(sorted({p.artifact for p in report.problems})[:5])
            raise CheckFailed(f"{len(report.problems)} problem(s): {names}")


def forget_command(
    source: Annotated[str | None, typer.Option("--source", help="A source file, as given to ingest.")] = None,
    record: Annotated[str | None, typer.Option("--record", help="A record id (rec_...).")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (recorded).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Keep a record (or every record of a source file) out of future snapshots; list the existing snapshots
    and adapters that hold them (history is not rewritten)."""
    with cli_errors():
        from curation.amend.forget import forget
        from eval.registry import actor

        result = forget(current_workspace().catalog, actor=actor(), source=source, record_id=record, reason=reason)
        payload = result.to_json()
        if as_json:
            emit_json(payload)
            return
        print_facts({k: v for k, v in payload.items() if k not in ("record_ids", "snapshots", "adapters")})
        print_table(result.snapshots, title="snapshots that hold forgotten records")
        print_table(result.adapters, title="adapters trained on them")


def register(app: typer.Typer) -> None:
    """Add `audit` and `forget` as top-level commands of ``app``; calling it again changes nothing."""
    present = {info.name for info in app.registered_commands}
    commands: dict[str, Callable[..., None]] = {"audit": audit_command, "forget": forget_command}
    for name, function in commands.items():
        if name not in present:
            app.command(name=name)(function)
