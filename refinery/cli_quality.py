"""`refinery pii redact`: redacted versions of the records a scan's pii check flagged.

Exit codes: 0 done (also when there was nothing to redact), 2 a usage problem (unknown scan, a scan without
the pii check, no scan yet).
"""

from __future__ import annotations

from typing import Annotated

import typer

from refinery.cli_context import cli_errors, current_workspace
from refinery.output import JsonOpt, emit_json, print_facts, print_table

pii_app = typer.Typer(help="PII found by `refinery scan` (check pii): redaction.", no_args_is_help=True)


@pii_app.command("redact")
def redact(
    scan: Annotated[
        str | None, typer.Option("--scan", help="Scan id (default: the latest completed scan that ran pii).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Store a redacted version ([EMAIL], [PHONE], [CREDIT_CARD], ...) of every record pii flagged."""
    with cli_errors():
        from curation.amend.redact import redact_scan

        result = redact_scan(current_workspace().catalog, scan)
        payload = result.to_json()
        if as_json:
            emit_json(payload)
            return
        print_facts({k: v for k, v in payload.items() if k != "versions"}, title="pii redact")
        rows = [
            {"original": v.original, "redacted": v.redacted, "kinds": v.kinds, "new": v.new} for v in result.versions
        ]
        if rows:
            print_table(rows, title="record versions")


def register(app: typer.Typer) -> None:
    """Add the ``pii`` command group to ``app``; calling it again changes nothing."""
    if not any(group.name == "pii" for group in app.registered_groups):
        app.add_typer(pii_app, name="pii")
