"""`refinery report`: the quality report of a scan as one self-contained HTML page.

Exit codes: 0 written, 2 a usage problem (no complete scan, unknown scan id, bad numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refinery.cli_context import cli_errors, current_workspace
from refinery.output import JsonOpt, emit_json, print_facts, stdout


def report(
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Where to write the HTML page. Default: <workspace>/reports/<scan id>.html."),
    ] = None,
    scan: Annotated[
        str | None, typer.Option("--scan", help="Scan id (scan_...). Default: the latest complete scan.")
    ] = None,
    examples: Annotated[int, typer.Option(help="Top examples shown per check.", min=0)] = 5,
    max_points: Annotated[int, typer.Option(help="Most records drawn on the embedding map.", min=1)] = 5000,
    compute_embeddings: Annotated[
        bool,
        typer.Option(help="Embed records that have no stored prompt embedding (slow) instead of leaving them off."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the quality report of a scan: counts, score histograms, clusters, embedding map, top examples."""
    with cli_errors():
        from curation.report.collect import resolve_scan_id
        from curation.report.page import write_report

        ws = current_workspace()
        scan_id = resolve_scan_id(ws.catalog, scan)
        path = html.expanduser().resolve() if html else ws.root / "reports" / f"{scan_id}.html"
        result = write_report(ws.catalog, path, scan_id, examples, max_points, compute_embeddings)
        if as_json:
            emit_json(result.to_json())
        else:
            print_facts({"scan_id": result.scan_id, "checks": ", ".join(result.checks)}, title="quality report")
            stdout.print(f"report written to {result.path} ({result.bytes / 1024:,.1f} KiB)", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `report` as a top-level command of ``app``; calling it again changes nothing."""
    if "report" not in {info.name for info in app.registered_commands}:
        app.command(name="report")(report)
