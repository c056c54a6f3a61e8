"""How commands speak: exactly one JSON object on stdout with --json, tables otherwise; errors on stderr."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

stdout = Console()
stderr = Console(stderr=True)

#: The --json option every command takes.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (logs go to stderr).")]

EXIT_OK = 0
EXIT_FAILED = 1  # a failed check, gate or verification
EXIT_USAGE = 2  # a usage or configuration error


class UsageError(Exception):
    """Bad arguments or configuration, or a step run out of order: exit code 2."""


class CheckFailed(Exception):
    """A verification, gate or threshold failed: exit code 1."""


def usage_errors() -> tuple[type[BaseException], ...]:
    """Library exceptions that mean 'the user asked for something impossible' (exit 2)."""
    from pydantic import ValidationError

    from curation.amend.forget import ForgetError
    from curation.amend.redact import RedactionError
    from curation.checks import ScanError
    from curation.ingest.options import IngestConfigError
    from curation.report.collect import ReportError
    from curation.review.connection import ReviewError
    from curation.similarity.eval_match import ContaminationError
    from curation.snapshot import SnapshotError
    from curation.snapshot.diff import SnapshotDiffError
    from curation.snapshot.export import ExportError
    from refinery.lineage import LineageError

    found: list[type[BaseException]] = [
        UsageError,
        ScanError,
        SnapshotError,
        LineageError,
        ValidationError,
        IngestConfigError,
        ContaminationError,
        ReviewError,
        ForgetError,
        RedactionError,
        ReportError,
        SnapshotDiffError,
        ExportError,
    ]
    with contextlib.suppress(ImportError):  # training is an extra; its config errors are usage errors too
        from training.base_model import BaseModelError
        from training.config import ConfigError

        found += [ConfigError, BaseModelError]
    return tuple(found)


def failure_errors() -> tuple[type[BaseException], ...]:
    from schemas.catalog import CatalogError
    from schemas.manifest import ManifestError

    return (CheckFailed, ManifestError, CatalogError)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Map library exceptions to a one-line message on stderr and the documented exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except usage_errors() as exc:
        stderr.print(f"[red]error:[/red] {_one_line(exc)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except failure_errors() as exc:
        stderr.print(f"[red]failed:[/red] {_one_line(exc)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None


def _one_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return " ".join(str(exc).split())


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_table(rows: Sequence[dict[str, Any]], title: str | None = None, max_width: int = 80) -> None:
    if not rows:
        stdout.print("(no rows)")
        return
    table = Table(title=title, show_lines=False)
    for name in rows[0]:
        table.add_column(str(name), overflow="fold", max_width=max_width)
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    stdout.print(table)


def print_facts(facts: dict[str, Any], title: str | None = None) -> None:
    table = Table(title=title, show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in facts.items():
        table.add_row(str(key), _cell(value))
    stdout.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        text = value[:80].decode("utf-8", errors="replace")
        return text + ("..." if len(value) > 80 else "")
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


#: Summary keys of a scan check worth a column in a terminal table (the rest is in --json and the catalog).
SCAN_COLUMNS = ("clusters", "duplicates", "flagged", "conflicting_clusters", "threshold", "scope", "error")


def scan_table_rows(checks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per check with the columns of SCAN_COLUMNS that any check reports."""
    present = [c for c in SCAN_COLUMNS if any(c in summary for summary in checks.values())]
    return [{"check": name, **{c: summary.get(c) for c in present}} for name, summary in checks.items()]
