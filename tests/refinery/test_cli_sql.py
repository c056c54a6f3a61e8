"""`refinery sql`: analyst SQL reads the catalog and nothing else (no file, network or extension access, settings
locked), under a time limit, with the habits of a SQL shell: a row limit for the table, four output formats, the
query from a file or stdin, BLOBs shown by size. Each attack is tried through the real CLI and at library level
(``Catalog.analyst_query``) on a real catalog."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner, Result

from refinery.cli import app
from schemas.catalog import (
    ANALYST_SETTINGS,
    AnalystQueryError,
    AnalystTimeoutError,
    Catalog,
    CatalogError,
    unique_names,
)
from tests.support.cli import invoke_cli

ROOT = Path(__file__).resolve().parents[2]
N_RECORDS = 12
#: Never ends within a test's patience: 10^12 pairs.
SLOW = "SELECT sum(a.range * b.range) AS s FROM range(1000000) a, range(1000000) b"
HUNDRED = "SELECT printf('r%03d', i) AS v FROM range(100) t(i) ORDER BY i"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with N_RECORDS records and one quarantined row (queries here only read it)."""
    folder = tmp_path_factory.mktemp("sql")
    data = folder / "data.jsonl"
    rows = [json.dumps({"instruction": f"say {i}", "input": "", "output": f"answer {i}"}) for i in range(N_RECORDS)]
    data.write_text("\n".join([*rows, "{not json"]) + "\n", encoding="utf-8")
    result = invoke_cli(folder / "ws", "ingest", str(data))
    assert result.exit_code == 0, result.output
    return folder / "ws"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the workspace holding a file an attacker wants to read."""
    (tmp_path / "secret.txt").write_text("top secret\n", encoding="utf-8")
    (tmp_path / "secret.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    return tmp_path


def sql(ws: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, ["--workspace", str(ws), "--quiet", "sql", *args], input=stdin)


def assert_usage_error(result: Result, *fragments: str) -> None:
    """Exit 2, one line on stderr naming why, no traceback; on stdout nothing, or under --json only the error's
    JSON object."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "" or json.loads(result.stdout)["exit_code"] == 2, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------------- the lockdown

#: (SQL with {dir} for a folder outside the workspace, what the one-line error must say, paths that must not
#: appear). Every way out that DuckDB offers: writes, reads, other databases, extensions, secrets, the network and
#: the settings that would turn any of them back on.
ATTACKS = [
    ("COPY records TO '{dir}/x.csv'", "file access is disabled for analyst SQL", ["x.csv"]),
    ("COPY (SELECT 1) TO '{dir}/x.parquet' (FORMAT parquet)", "file access is disabled", ["x.parquet"]),
    ("EXPORT DATABASE '{dir}/export'", "file access is disabled", ["export"]),
    ("IMPORT DATABASE '{dir}'", "file access is disabled", []),
    ("COPY records FROM '{dir}/secret.csv'", "file access is disabled", []),
    ("SELECT * FROM read_csv('{dir}/secret.csv')", "file access is disabled", []),
    ("SELECT * FROM '{dir}/secret.csv'", "file access is disabled", []),
    ("SELECT * FROM read_parquet('{dir}/x.parquet')", "file access is disabled", []),
    ("SELECT * FROM read_json('{dir}/secret.txt')", "file access is disabled", []),
    ("SELECT * FROM read_text('{dir}/secret.txt')", "file access is disabled", []),
    ("SELECT * FROM read_blob('{dir}/secret.txt')", "file access is disabled", []),
    ("SELECT * FROM glob('{dir}/*')", "file access is disabled", []),
    ("SELECT * FROM read_text('/etc/hostname')", "file access is disabled", []),
    ("ATTACH '{dir}/other.duckdb' AS other", "file access is disabled", ["other.duckdb"]),
    ("SELECT * FROM read_csv('https://example.com/x.csv')", "file access is disabled", []),
    ("SELECT * FROM 'http://example.com/x.parquet'", "file access is disabled", []),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')", "file access is disabled", []),
    ("INSTALL httpfs", "extensions are disabled for analyst SQL", []),
    ("LOAD httpfs", "extensions are disabled for analyst SQL", []),
    ("SET enable_external_access = true", "settings are locked for analyst SQL", []),
    ("RESET enable_external_access", "settings are locked", []),
    ("SET lock_configuration = false", "settings are locked", []),
    ("PRAGMA enable_external_access = true", "settings are locked", []),
    ("SET allowed_directories = ['/']", "settings are locked", []),
    ("SET temp_directory = '{dir}'", "settings are locked", []),
    ("SELECT 1; COPY records TO '{dir}/late.csv'", "file access is disabled", ["late.csv"]),
    ("DELETE FROM records", "read-only", []),
    ("CREATE TABLE stolen AS SELECT 1 AS x", "read-only", []),
]


@pytest.mark.parametrize(("template", "message", "not_created"), ATTACKS, ids=[a[0][:40] for a in ATTACKS])
def test_the_cli_refuses_each_way_out_of_the_catalog_in_one_line(
    ws: Path, outside: Path, template: str, message: str, not_created: list[str]
) -> None:
    before = sorted(p.name for p in outside.iterdir())
    assert_usage_error(sql(ws, template.format(dir=outside)), message)
    assert sorted(p.name for p in outside.iterdir()) == before
    assert not any((outside / name).exists() for name in not_created)


@pytest.mark.parametrize(("template", "message", "not_created"), ATTACKS, ids=[a[0][:40] for a in ATTACKS])
def test_the_library_refuses_each_way_out_of_the_catalog(
    ws: Path, outside: Path, template: str, message: str, not_created: list[str]
) -> None:
    catalog = Catalog(ws / "catalog.duckdb")
    with pytest.raises(AnalystQueryError, match=re.escape(message)):
        catalog.analyst_query(template.format(dir=outside))
    assert not any((outside / name).exists() for name in not_created)


def test_an_attack_through_a_subprocess_exits_2_without_a_traceback(ws: Path, outside: Path) -> None:
    target = outside / "dump.csv"
    done = subprocess.run(
        [sys.executable, "-m", "refinery.cli", "--workspace", str(ws), "sql", f"COPY records TO '{target}'"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == "", done
    assert "file access is disabled for analyst SQL" in done.stderr and "Traceback" not in done.stderr
    assert not target.exists()


def test_the_analyst_connection_is_locked_and_the_products_is_not(ws: Path) -> None:
    catalog = Catalog(ws / "catalog.duckdb")
    with catalog.analyst_read() as con:
        found = dict(con.execute("SELECT name, value FROM duckdb_settings()").fetchall())
    assert found["enable_external_access"] == "false" and found["lock_configuration"] == "true"
    assert found["temp_directory"] == ""  # DuckDB would let SQL read and write any file in a scratch folder
    assert set(ANALYST_SETTINGS) <= set(found)
    # the lock lives and dies with the analyst connection: the product's own reads are unchanged afterwards
    assert catalog.scalar("SELECT current_setting('enable_external_access')") is True
    assert catalog.scalar("SELECT current_setting('lock_configuration')") is False


def test_python_objects_in_scope_are_not_readable(ws: Path) -> None:
    secret_table = pa.table({"password": ["hunter2"]})  # DuckDB's Python client scans variables by name
    assert secret_table.num_rows == 1
    with pytest.raises(AnalystQueryError):
        Catalog(ws / "catalog.duckdb").analyst_query("SELECT * FROM secret_table")


def test_every_view_and_macro_of_the_catalog_runs_under_the_lockdown(tmp_path: Path) -> None:
    """No view or macro reads a file (read_parquet of snapshot files, say): each one runs on a locked
    connection."""
    catalog = Catalog(tmp_path / "catalog.duckdb")
    catalog.migrate()
    views = [r["view_name"] for r in catalog.query("SELECT view_name FROM duckdb_views() WHERE NOT internal")]
    assert {"quarantine", "flagged_records", "eval_gate", "registry", "source_row_usage"} <= set(views)
    for view in views:
        result = catalog.analyst_query(f"SELECT * FROM {view}", limit=1)
        assert result.columns, view
    assert catalog.analyst_query("SELECT * FROM adapter_data_diff('adp_a', 'adp_b')").rows == []


def test_analyst_sql_needs_a_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="run `refinery ingest` first"):
        Catalog(tmp_path / "catalog.duckdb").analyst_query("SELECT 1")


# ------------------------------------------------------------------------------------------------- the time limit


def test_the_time_limit_interrupts_a_query_at_library_level(ws: Path) -> None:
    catalog = Catalog(ws / "catalog.duckdb")
    started = time.monotonic()
    with pytest.raises(AnalystTimeoutError, match=re.escape("time limit of 0.3 s")):
        catalog.analyst_query(SLOW, timeout=0.3)
    assert time.monotonic() - started < 10
    # the interrupted connection is gone: the next query runs normally
    assert catalog.analyst_query("SELECT count(*) FROM records", timeout=30).rows == [(N_RECORDS,)]


def test_the_time_limit_is_a_usage_error_that_names_the_option(ws: Path) -> None:
    started = time.monotonic()
    assert_usage_error(sql(ws, SLOW, "--timeout", "0.3"), "time limit of 0.3 s", "--timeout SECONDS")
    assert time.monotonic() - started < 10


# ------------------------------------------------------------------------------------------------- ordinary queries


def test_ordinary_queries_tables_and_views_work(ws: Path) -> None:
    result = sql(ws, "SELECT count(*) AS n FROM records", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == [{"n": N_RECORDS}]
    result = sql(ws, "SELECT file, line, reason FROM quarantine", "--json")
    [row] = json.loads(result.stdout)
    assert row["line"] == N_RECORDS + 1 and row["reason"].startswith("malformed JSON")


def test_several_statements_run_in_order_and_the_last_ones_rows_print(ws: Path) -> None:
    text = "CREATE TEMP TABLE t AS SELECT count(*) AS n FROM records; SELECT n + 1 AS m FROM t"
    assert json.loads(sql(ws, text, "--json").stdout) == [{"m": N_RECORDS + 1}]
    assert json.loads(sql(ws, "SELECT 1 AS a; SELECT 2 AS b", "--json").stdout) == [{"b": 2}]


def test_an_empty_query_and_a_syntax_error_are_usage_errors(ws: Path) -> None:
    assert_usage_error(sql(ws, "  ; -- nothing"), "no SQL statement")
    assert_usage_error(sql(ws, "SELEC 1"), "SQL error", "syntax error")
    assert_usage_error(sql(ws, "SELECT * FROM no_such_table"), "SQL error", "no_such_table")


def test_repeated_column_names_stay_apart(ws: Path) -> None:
    assert json.loads(sql(ws, "SELECT 1 AS a, 2 AS a, 3 AS a_1", "--json").stdout) == [{"a": 1, "a_1": 2, "a_1_1": 3}]
    assert unique_names(["id", "id", "x", "id"]) == ["id", "id_1", "x", "id_2"]


# ------------------------------------------------------------------------------------------------- limits


def _shown(text: str) -> list[str]:
    return re.findall(r"r\d{3}", text)


def test_the_table_shows_40_rows_and_says_how_many_more(ws: Path) -> None:
    result = sql(ws, HUNDRED)
    assert result.exit_code == 0, result.stderr
    assert _shown(result.stdout) == [f"r{i:03d}" for i in range(40)]
    assert "... 60 more rows; --limit N or --all" in result.stderr


def test_limit_and_all_change_what_the_table_shows(ws: Path) -> None:
    five = sql(ws, HUNDRED, "--limit", "5")
    assert _shown(five.stdout) == ["r000", "r001", "r002", "r003", "r004"] and "95 more rows" in five.stderr
    everything = sql(ws, HUNDRED, "--all")
    assert len(_shown(everything.stdout)) == 100 and "more rows" not in everything.stderr
    fits = sql(ws, "SELECT count(*) AS n FROM records")
    assert fits.exit_code == 0 and "more rows" not in fits.stderr
    assert_usage_error(sql(ws, HUNDRED, "--limit", "5", "--all"), "--limit and --all")


def test_counting_the_rest_stops_at_a_cap(ws: Path) -> None:
    catalog = Catalog(ws / "catalog.duckdb")
    result = catalog.analyst_query(HUNDRED, limit=5)
    assert len(result.rows) == 5 and (result.more, result.more_exact) == (95, True)
    with catalog.analyst_cursor(HUNDRED) as cursor:
        assert cursor.fetch(5)[0] == ("r000",)
        assert cursor.count_rest(cap=10) == (10, False)
    beyond = sql(ws, "SELECT range AS r FROM range(200000)", "--limit", "1")
    assert "... more than 100000 more rows" in beyond.stderr


def test_machine_formats_print_every_row_unless_limited(ws: Path) -> None:
    rows = json.loads(sql(ws, HUNDRED, "--json").stdout)
    assert [r["v"] for r in rows] == [f"r{i:03d}" for i in range(100)]
    limited = sql(ws, HUNDRED, "--json", "--limit", "3")
    assert json.loads(limited.stdout) == [{"v": "r000"}, {"v": "r001"}, {"v": "r002"}]
    assert "97 more rows" in limited.stderr
    lines = sql(ws, HUNDRED, "--jsonl").stdout.splitlines()
    assert len(lines) == 100 and json.loads(lines[99]) == {"v": "r099"}
    table = list(csv.reader(io.StringIO(sql(ws, HUNDRED, "--csv").stdout)))
    assert table[0] == ["v"] and len(table) == 101 and table[100] == ["r099"]


def test_two_output_formats_are_refused(ws: Path) -> None:
    assert_usage_error(sql(ws, "SELECT 1", "--json", "--csv"), "--json and --csv")
    assert_usage_error(sql(ws, "SELECT 1", "--jsonl", "--json"), "exclude each other")


def test_csv_of_an_empty_result_still_has_its_header(ws: Path) -> None:
    result = sql(ws, "SELECT record_id, prompt FROM records WHERE false", "--csv")
    assert result.exit_code == 0 and result.stdout.splitlines() == ["record_id,prompt"]


# ----------------------------------------------------------------------------------------- where the SQL comes from


def test_the_query_comes_from_stdin_with_a_dash(ws: Path) -> None:
    result = sql(ws, "-", "--json", stdin="SELECT count(*) AS n\nFROM records;\n")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [{"n": N_RECORDS}]


def test_the_query_comes_from_a_file(ws: Path, tmp_path: Path) -> None:
    query = tmp_path / "q.sql"
    query.write_text("-- how many\nSELECT count(*) AS n FROM records\n", encoding="utf-8")
    assert json.loads(sql(ws, "--file", str(query), "--json").stdout) == [{"n": N_RECORDS}]
    assert_usage_error(sql(ws, "SELECT 1", "--file", str(query)), "not both")
    assert_usage_error(sql(ws, "--file", str(tmp_path / "missing.sql")), "no SQL file")
    binary = tmp_path / "binary.sql"
    binary.write_bytes(b"SELECT \xff")
    assert_usage_error(sql(ws, "--file", str(binary)), "not UTF-8 text")
    assert_usage_error(sql(ws), "no SQL")


# ------------------------------------------------------------------------------------------------- BLOBs


def test_blobs_show_as_their_size_in_the_table_and_as_hex_elsewhere(ws: Path) -> None:
    query = "SELECT '\\xAA\\xBB\\x00'::BLOB AS b, [ '\\x01'::BLOB ] AS l"
    table = sql(ws, query)
    assert table.exit_code == 0 and "<blob 3 bytes>" in table.stdout and "<blob 1 bytes>" in table.stdout
    assert json.loads(sql(ws, query, "--json").stdout) == [{"b": "aabb00", "l": ["01"]}]
    assert json.loads(sql(ws, query, "--jsonl").stdout) == {"b": "aabb00", "l": ["01"]}
    assert sql(ws, query, "--csv").stdout.splitlines() == ["b,l", 'aabb00,"[""01""]"']


def test_a_quarantined_rows_raw_bytes_round_trip_through_hex(ws: Path) -> None:
    [row] = json.loads(sql(ws, "SELECT raw FROM quarantine", "--json").stdout)
    assert bytes.fromhex(row["raw"]).decode("utf-8").strip() == "{not json"
    table = sql(ws, "SELECT raw FROM quarantine")
    assert re.search(r"<blob \d+ bytes>", table.stdout), table.stdout


# ------------------------------------------------------------------------------------------------- help


def test_help_says_what_each_output_prints() -> None:
    result = CliRunner().invoke(app, ["sql", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for phrase in ("--jsonl", "--csv", "--file", "--timeout", "--all", "JSON list", "<blob N bytes>", "40 rows"):
        assert phrase in text, phrase
