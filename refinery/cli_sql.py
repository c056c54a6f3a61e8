"""`refinery sql`: an analyst's read-only SQL over the catalog. Parsing and printing only: the lockdown (the catalog
and nothing else: no files, network or extensions, settings locked) and the time limit live in
``schemas.catalog.Catalog.analyst_cursor``.

Output: a table of at most 40 rows by default (a note on stderr says how many more there are), or every row as
one JSON list (``--json``), JSON lines (``--jsonl``) or CSV (``--csv``) unless ``--limit`` is given. BLOB values
are ``<blob N bytes>`` in the table and lowercase hex in the other formats.

Exit codes: 0 the query ran; 2 a SQL error, a statement the lockdown refuses, the time limit, or bad options.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from refinery.cli_context import cli_errors, current_workspace_path
from refinery.errors import UsageError
from refinery.output import emit_json, print_table, replace_blobs, stderr
from refinery.workspace import Workspace

#: Rows the table shows without --limit or --all (the DuckDB CLI's habit).
TABLE_LIMIT = 40
#: Seconds a query may run without --timeout.
DEFAULT_TIMEOUT = 60.0
_BATCH = 1000


def sql_command(
    query: Annotated[
        str | None,
        typer.Argument(
            help="The SQL, or - to read it from stdin. Several statements separated by ; run in order; the last "
            "one's rows are printed.",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Read the SQL from this file (instead of QUERY).", show_default=False)
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=0,
            help=f"Print at most N rows. Default: {TABLE_LIMIT} for the table, all rows for --json, --jsonl, --csv.",
            show_default=False,
        ),
    ] = None,
    all_rows: Annotated[bool, typer.Option("--all", help="Print every row, also in the table.")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="Stop the query after SECONDS (0: no limit).")
    ] = DEFAULT_TIMEOUT,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON list on stdout: an object per row, column -> value.")
    ] = False,
    as_jsonl: Annotated[bool, typer.Option("--jsonl", help="Print JSON lines: one object per row.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV with a header row.")] = False,
) -> None:
    """Run read-only SQL over the catalog (tables, views and macros in docs/CATALOG.md), and nothing else: no file,
    network or extension access, no settings changed.

    Without a format option it prints a table of at most 40 rows and says on stderr how many more there are;
    --json prints one JSON list of row objects, --jsonl one JSON object per line, --csv a header and the rows
    (all rows unless --limit). BLOB values show as <blob N bytes> in the table and as lowercase hex otherwise."""
    with cli_errors():
        from schemas.catalog import AnalystTimeoutError

        formats = [name for name, on in (("--json", as_json), ("--jsonl", as_jsonl), ("--csv", as_csv)) if on]
        if len(formats) > 1:
            raise UsageError(f"choose one output format: {' and '.join(formats)} exclude each other")
        if all_rows and limit is not None:
            raise UsageError("--limit and --all exclude each other")
        text = _read_query(query, file)
        shown = _rows_to_show(limit, all_rows, table=not formats)
        catalog = Workspace(current_workspace_path()).catalog
        try:
            with catalog.analyst_cursor(text, timeout=timeout) as cursor:
                batches = cursor.batches(_BATCH, limit=shown)
                if as_jsonl:
                    _write_jsonl(cursor.columns, batches)
                elif as_csv:
                    _write_csv(cursor.columns, batches)
                else:
                    rows = [dict(zip(cursor.columns, row, strict=True)) for batch in batches for row in batch]
                    if as_json:
                        emit_json(replace_blobs(rows, bytes.hex))
                    else:
                        print_table(replace_blobs(rows, _blob_marker))
                if shown is not None:
                    more, exact = cursor.count_rest()
                    if more:
                        count = f"{more}" if exact else f"more than {more}"
                        stderr.print(f"... {count} more rows; --limit N or --all", highlight=False)
        except AnalystTimeoutError as exc:
            raise UsageError(f"{exc}; --timeout SECONDS allows more (0: no limit)") from exc


def _rows_to_show(limit: int | None, all_rows: bool, table: bool) -> int | None:
    """How many rows to print (None: all): --limit, else all with --all or a machine format, else the table's 40."""
    if limit is not None:
        return limit
    return None if all_rows or not table else TABLE_LIMIT


def _read_query(query: str | None, file: Path | None) -> str:
    if file is not None:
        if query is not None:
            raise UsageError("give the SQL either as QUERY or with --file, not both")
        if not file.is_file():
            raise UsageError(f"no SQL file {file}")
        try:
            return file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"SQL file {file} is not UTF-8 text: {exc.reason}") from exc
    if query is None:
        raise UsageError("no SQL: give it as QUERY, - to read stdin, or --file PATH")
    return sys.stdin.read() if query == "-" else query


def _blob_marker(value: bytes) -> str:
    return f"<blob {len(value)} bytes>"


def _write_jsonl(columns: list[str], batches: Iterator[list[tuple[Any, ...]]]) -> None:
    for batch in batches:
        lines = (
            json.dumps(replace_blobs(dict(zip(columns, row, strict=True)), bytes.hex), default=str, ensure_ascii=False)
            for row in batch
        )
        sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def _write_csv(columns: list[str], batches: Iterator[list[tuple[Any, ...]]]) -> None:
    if not columns:
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for batch in batches:
        writer.writerows([_csv_cell(value) for value in row] for row in batch)
    sys.stdout.flush()


def _csv_cell(value: Any) -> Any:
    """A CSV field: empty for NULL, hex for a BLOB, JSON for a list, struct or map, the value's text otherwise."""
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return json.dumps(replace_blobs(value, bytes.hex), default=str, ensure_ascii=False)
    return replace_blobs(value, bytes.hex)


def register(app: typer.Typer) -> None:
    """Add `sql` as a top-level command of ``app``; calling it again changes nothing."""
    if "sql" not in {info.name for info in app.registered_commands}:
        app.command(name="sql")(sql_command)
