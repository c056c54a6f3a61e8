"""How commands speak: exactly one JSON object on stdout with --json, tables otherwise; errors and warnings on
stderr (the messages of ``refinery.cli_context.cli_errors``). Printing only: this module knows no error class.

It remembers, for the command being run, whether --json was asked for and whether the JSON object was printed
yet, so that ``cli_errors`` prints an error as that one object when the command failed before printing its own."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

stdout = Console()
stderr = Console(stderr=True)

_session: dict[str, bool] = {"json": False, "emitted": False}


def start_session(as_json: bool) -> None:
    """A command starts: ``as_json`` is whether its arguments hold --json (before they are parsed)."""
    _session.update(json=as_json, emitted=False)


def _json_given(value: bool) -> bool:
    """The --json option's callback: once parsed, the option itself says whether JSON was asked for."""
    _session["json"] = bool(value)
    return value


def json_requested() -> bool:
    return _session["json"]


def json_emitted() -> bool:
    """Whether the command printed its JSON object already (an error then goes to stderr only)."""
    return _session["emitted"]


#: The --json option every command takes.
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help='Print one JSON object on stdout (logs go to stderr); an error is {"error", "exit_code"}.',
        callback=_json_given,
    ),
]


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    _session["emitted"] = True


def replace_blobs(value: Any, blob: Callable[[bytes], str]) -> Any:
    """``value`` with every bytes value, also inside lists, structs and maps, replaced by ``blob(value)``: how
    `refinery sql` and the service's ``POST /sql`` show BLOBs (hex in JSON, a size in tables)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return blob(bytes(value))
    if isinstance(value, dict):
        return {key: replace_blobs(item, blob) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [replace_blobs(item, blob) for item in value]
    return value


def warn(message: str) -> None:
    """A warning line on stderr (also under --json: stdout keeps its one JSON object)."""
    stderr.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


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


def print_snapshot(facts: dict[str, Any], title: str | None = None) -> None:
    """A created snapshot (``SnapshotResult.to_json()``): its facts, then what each check did as a table."""
    facts = dict(facts)
    effects = facts.pop("check_effects", {})
    print_facts(facts, title=title)
    if effects:
        rows = [{"check": check, **counts} for check, counts in effects.items()]
        print_table(rows, title="what each check did (dropped_alone: no other check or rule would have)")


def scan_table_rows(checks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per check with the columns of SCAN_COLUMNS that any check reports."""
    present = [c for c in SCAN_COLUMNS if any(c in summary for summary in checks.values())]
    return [{"check": name, **{c: summary.get(c) for c in present}} for name, summary in checks.items()]
