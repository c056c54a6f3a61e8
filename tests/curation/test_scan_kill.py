"""A real kill: a scan in a subprocess is SIGKILLed part-way, then a rerun must leave the catalog exactly as a
clean scan in a fresh catalog would (one scan row, complete; one finding per record and check; no duplicate
signature rows; the same duplicate clusters).

The fault is placed deterministically (test code only, nothing in production waits): the child wraps the catalog
writes, and at the chosen point it holds (``tests.support.kill``: it prints a line and blocks until the parent, on
reading that line, kills it). So the kill lands at exactly that point, whatever the load on the machine:
- ``inside_save``: inside the kill_at-th signature write transaction, after its INSERTs, before its COMMIT;
- ``after_chunk``: after the kill_at-th signature transaction committed;
- ``after_check``: after the kill_at-th check's findings were stored.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from curation.checks import run_scan
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from schemas.catalog import Catalog
from tests.curation.test_near_dup import _chat, _results, mutate, random_text
from tests.support.kill import Child, kill_at_hold

CHECKS = ["exact", "near_dup"]
N_BASE, N_NEAR = 500, 100  # 600 records, 100 planted near duplicates
CHUNK = 40  # signature chunk size in the child: 15 write transactions

CHILD = textwrap.dedent(
    """
    import contextlib, sys
    from pathlib import Path
    import curation.similarity.minhash_store as store
    import curation.checks.runner as scan
    from schemas.catalog import Catalog
    from tests.support.kill import hold

    path, mode, chunk, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store.WRITE_CHUNK = chunk
    real_save, real_store, real_write = store.save_signatures, scan.store_check, Catalog.write
    state = {"saves": 0, "in_save": False, "checks": 0}

    @contextlib.contextmanager
    def write(self):
        with real_write(self) as con:
            yield con
            if mode == "inside_save" and state["in_save"] and state["saves"] == kill_at:
                hold("inside signature transaction %d, before its commit" % kill_at)

    def save(*args, **kwargs):
        state["saves"] += 1
        state["in_save"] = True
        try:
            real_save(*args, **kwargs)
        finally:
            state["in_save"] = False
        if mode == "after_chunk" and state["saves"] == kill_at:
            hold("after signature transaction %d" % kill_at)

    def store_check(catalog, scan_id, name, output):
        real_store(catalog, scan_id, name, output)
        state["checks"] += 1
        if mode == "after_check" and state["checks"] == kill_at:
            hold("after storing " + name)

    Catalog.write = write
    store.save_signatures = save
    scan.store_check = store_check
    scan.run_scan(Catalog(Path(path)), sys.argv[5].split(","))
    print("done", flush=True)
    """
)


def _lines() -> list[str]:
    rng = random.Random(17)
    bases = [random_text(rng, 40) for _ in range(N_BASE)]
    near = [mutate(rng, bases[rng.randrange(N_BASE)], 2) for _ in range(N_NEAR)]
    return [_chat(text, f"answer {i % 7}") for i, text in enumerate(bases + near)]


def _catalog(tmp_path: Path, name: str, data: Path) -> Catalog:
    catalog = Catalog(tmp_path / name / "catalog.duckdb")
    catalog.migrate()
    ingest(catalog, [data], IngestOptions(name="data"))
    return catalog


def _kill_child(catalog: Catalog, mode: str, kill_at: int) -> None:
    args = ["-c", CHILD, str(catalog.path), mode, str(CHUNK), str(kill_at), ",".join(CHECKS)]
    with Child(args) as child:
        kill_at_hold(child, timeout=300)


@pytest.mark.parametrize(("mode", "kill_at"), [("inside_save", 4), ("after_chunk", 3), ("after_check", 1)])
def test_a_killed_scan_is_finished_by_a_rerun_exactly_like_a_clean_scan(
    tmp_path: Path, mode: str, kill_at: int
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(_lines()) + "\n", encoding="utf-8")
    n = N_BASE + N_NEAR
    killed = _catalog(tmp_path, "killed", data)
    _kill_child(killed, mode, kill_at)

    assert killed.scalar("SELECT count(*) FROM scans WHERE status = 'running'") == 1
    assert killed.scalar("SELECT count(*) FROM scans WHERE status = 'complete'") == 0
    stored = killed.scalar("SELECT count(*) FROM minhash_signatures")
    if mode == "after_chunk":
        assert stored == kill_at * CHUNK  # whole chunks only
    elif mode == "inside_save":
        assert stored == (kill_at - 1) * CHUNK  # the killed transaction left nothing: its INSERTs never committed
    else:
        assert stored == 0 and killed.scalar("SELECT count(*) FROM findings") == n  # exact stored, not near_dup

    rerun = run_scan(killed, CHECKS)
    assert not rerun.reused
    assert rerun.checks["near_dup"]["sketched"] + rerun.checks["near_dup"]["signatures_reused"] == n
    assert rerun.checks["near_dup"]["signatures_reused"] == stored

    fresh = _catalog(tmp_path, "fresh", data)
    clean = run_scan(fresh, CHECKS)
    assert clean.scan_id == rerun.scan_id and clean.checks["near_dup"]["duplicates"] > 0

    for catalog in (killed, fresh):
        assert catalog.query("SELECT scan_id, status FROM scans") == [{"scan_id": rerun.scan_id, "status": "complete"}]
        assert catalog.scalar("SELECT count(*) FROM findings") == n * len(CHECKS)
        assert catalog.scalar(
            "SELECT count(*) FROM (SELECT DISTINCT scan_id, record_id, check_name FROM findings)"
        ) == n * len(CHECKS)
        assert catalog.scalar("SELECT count(*) FROM minhash_signatures") == n
        assert catalog.scalar("SELECT count(DISTINCT (params_hash, record_id)) FROM minhash_signatures") == n
        assert catalog.scalar("SELECT count(*) FROM minhash_params") == 1
    assert _results(killed, rerun.scan_id) == _results(fresh, clean.scan_id)
