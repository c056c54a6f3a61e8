"""One process, many threads, one catalog file (what `refinery serve` does): reads, writes and analyst SQL at once.
DuckDB refuses a second connection with other settings while one is open in the process; the catalog's
connection gate makes the threads take turns instead, first come first served, so none fails and none starves."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from schemas.catalog import Catalog, CatalogLockedError


def _catalog(tmp_path: Path) -> Catalog:
    catalog = Catalog(tmp_path / "catalog.duckdb", lock_timeout=30)
    catalog.migrate()
    with catalog.write() as con:
        con.execute("CREATE TABLE counter (n INTEGER)")
    return catalog


def test_reads_writes_and_analyst_sql_in_threads_take_turns(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    errors: list[BaseException] = []
    stop = time.monotonic() + 3.0
    done = {"read": 0, "write": 0, "analyst": 0}
    lock = threading.Lock()

    def loop(kind: str) -> None:
        try:
            while time.monotonic() < stop:
                if kind == "read":
                    catalog.scalar("SELECT count(*) FROM counter")
                elif kind == "write":
                    with catalog.write() as con:
                        con.execute("INSERT INTO counter VALUES (1)")
                else:
                    catalog.analyst_query("SELECT count(*) AS n FROM counter", limit=1, timeout=10)
                with lock:
                    done[kind] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(k,)) for k in ["read"] * 8 + ["write"] * 2 + ["analyst"] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    # every kind got turns while eight readers kept reading: no kind starved
    assert all(n > 0 for n in done.values()), done
    assert catalog.scalar("SELECT count(*) FROM counter") == done["write"]


def test_a_read_inside_a_read_goes_on_while_a_writer_waits(tmp_path: Path) -> None:
    """A thread's nested read shares its own turn; it does not queue behind the writer waiting for that turn."""
    catalog = _catalog(tmp_path)
    wrote = threading.Event()

    def writer() -> None:
        with catalog.write() as con:
            con.execute("INSERT INTO counter VALUES (1)")
        wrote.set()

    with catalog.read() as con:
        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(0.3)  # the writer is queued now
        assert not wrote.is_set()
        assert (
            catalog.scalar("SELECT count(*) FROM counter") == con.execute("SELECT count(*) FROM counter").fetchone()[0]
        )
    thread.join(30)
    assert wrote.is_set()


def test_a_turn_that_never_comes_is_a_lock_error(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    impatient = Catalog(catalog.path, lock_timeout=0.5)
    failed: list[BaseException] = []

    def writer() -> None:
        try:
            with impatient.write():
                pass
        except CatalogLockedError as exc:
            failed.append(exc)

    with catalog.read():
        thread = threading.Thread(target=writer)
        thread.start()
        thread.join(30)
    assert len(failed) == 1 and "busy with other connections of this process" in str(failed[0])


def test_a_writer_in_another_process_gets_in_between_busy_readers(tmp_path: Path) -> None:
    """Eight threads here read without pause, so a connection of this process is always open; a writer in another
    process posts its intent, the readers hold back new connections, and it gets in at once instead of timing
    out."""
    import subprocess
    import sys

    catalog = _catalog(tmp_path)
    stop = threading.Event()
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            with catalog.read() as con:  # a request that holds its connection a while: they overlap all the time
                con.execute("SELECT count(*) FROM counter").fetchall()
                time.sleep(0.05)
            reads[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        script = (
            "import sys, time\nfrom pathlib import Path\nfrom schemas.catalog import Catalog\n"
            "c = Catalog(Path(sys.argv[1]), lock_timeout=20)\nstart = time.monotonic()\n"
            "for _ in range(3):\n    with c.write() as con:\n        con.execute('INSERT INTO counter VALUES (1)')\n"
            "print(time.monotonic() - start)\n"
        )
        root = Path(__file__).resolve().parents[2]
        done = subprocess.run(
            [sys.executable, "-c", script, str(catalog.path)], capture_output=True, text=True, timeout=60, cwd=root
        )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 10 and reads[0] > 0
    assert catalog.scalar("SELECT count(*) FROM counter") == 3
    assert not catalog.path.with_name("catalog.duckdb.writer-waiting").exists()
