from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from schemas.catalog import Catalog, CatalogError, CatalogLockedError, migrations


def test_migrations_apply_once_and_are_recorded(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.duckdb")
    first = catalog.migrate()
    assert first == [v for v, _, _ in migrations()]
    assert catalog.migrate() == []
    rows = catalog.query("SELECT version, name FROM schema_migrations ORDER BY version")
    assert rows[0] == {"version": 1, "name": "init"}
    views = {r["view_name"] for r in catalog.query("SELECT view_name FROM duckdb_views() WHERE NOT internal")}
    assert {"quarantine", "flagged_records", "duplicate_clusters", "check_summary", "eval_items"} <= views


def test_write_rolls_back_on_error(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.duckdb")
    catalog.migrate()
    with pytest.raises(RuntimeError, match="boom"), catalog.write() as con:
        con.execute("INSERT INTO lineage_edges VALUES ('a', 'x', 'b', 'y', 'r', now())")
        raise RuntimeError("boom")
    assert catalog.scalar("SELECT count(*) FROM lineage_edges") == 0


def test_read_connection_cannot_write(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.duckdb")
    catalog.migrate()
    with pytest.raises(duckdb.Error, match="read-only mode"), catalog.read() as con:
        con.execute("DELETE FROM records")


def test_missing_catalog_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="run `refinery ingest` first"):
        Catalog(tmp_path / "nope.duckdb").query("SELECT 1")


def test_lock_held_by_another_process_times_out_with_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "catalog.duckdb"
    Catalog(path).migrate()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb,time; c=duckdb.connect({str(path)!r}); print('ok', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        with pytest.raises(CatalogLockedError, match="locked by another process"):
            Catalog(path, lock_timeout=0.5).query("SELECT 1")
    finally:
        holder.kill()
        holder.wait()


def test_reads_inside_reading_share_one_connection_and_one_state(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.duckdb")
    catalog.migrate()
    with catalog.write() as con:
        con.execute("CREATE TABLE t (x INTEGER)")
        con.execute("INSERT INTO t VALUES (1)")
    with catalog.read() as first, catalog.read() as second:
        assert first is not second  # each read opens its own connection
    with catalog.reading():
        with catalog.read() as first:
            pass
        with catalog.read() as second:
            assert second is first  # still open: the block's one connection, not closed by the first read
            assert second.execute("SELECT x FROM t").fetchall() == [(1,)]
        assert Catalog(catalog.path).scalar("SELECT count(*) FROM t") == 1  # another Catalog of the same file too
        with catalog.reading(), catalog.read() as nested:
            assert nested is first  # a nested block changes nothing
    with catalog.read() as after:
        assert after is not first  # the block's connection was closed with it
    with catalog.write() as con:  # and writes work again once it is over
        con.execute("INSERT INTO t VALUES (2)")
    assert catalog.scalar("SELECT count(*) FROM t") == 2
