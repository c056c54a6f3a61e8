"""A full disk during an atomic write is one clear error and leaves nothing behind; a second process that waits for
the catalog or for a step says so, and a killed holder releases what it held.

The faults are real: writes to ``/dev/full`` (always ENOSPC), a child whose file-size limit is exhausted (EFBIG),
and lock holders in other processes.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import duckdb
import pytest

from schemas.atomic import DiskFullError, atomic_directory, is_disk_full
from schemas.catalog import Catalog, CatalogLockedError
from schemas.locks import StepLockedError, step_lock
from tests.support.kill import Child

DEV_FULL = Path("/dev/full")


@pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full (Linux)")
def test_a_folder_whose_write_runs_out_of_space_is_one_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "snapshots" / "snap_1"
    with pytest.raises(DiskFullError) as caught, atomic_directory(final) as staging:
        (staging / "train.parquet").write_bytes(b"x" * 1000)
        with DEV_FULL.open("wb") as full:  # the next file of the artifact: ENOSPC
            full.write(b"y" * 100_000)
            full.flush()
    message = str(caught.value)
    assert message.startswith(f"disk full while writing {final}: ") and " bytes free " in message
    assert "\n" not in message and "No space left on device" in message
    assert not final.exists() and list((tmp_path / "snapshots").iterdir()) == []  # no staging folder left


def test_a_file_that_hits_the_size_limit_is_one_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from pathlib import Path
        from schemas.atomic import DiskFullError, write_bytes_atomic

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_bytes_atomic(Path(sys.argv[1]), b"z" * 100_000)
        except DiskFullError as exc:
            print("DiskFullError", exc)
        """
    )
    target = tmp_path / "cache" / "entry.npz"
    with Child(["-c", script, str(target)]) as child:
        code, out, err = child.finish(timeout=120)
    assert code == 0, err
    assert out.startswith(f"DiskFullError disk full while writing {target}: ") and "File too large" in out
    assert list(target.parent.iterdir()) == []  # neither the file nor its temporary file


def test_disk_full_is_recognised_through_the_libraries_own_exceptions() -> None:
    duck = duckdb.TransactionException('Failed to commit: Could not write file "x.wal": No space left on device')
    assert is_disk_full(duck)
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as exc:
            raise RuntimeError("writing shard failed") from exc
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(13, "Permission denied")) and not is_disk_full(ValueError("bad"))


HOLD_STEP = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from schemas.locks import step_lock
    from tests.support.kill import hold

    with step_lock(Path(sys.argv[1]), "scan"):
        hold("scan lock")
    """
)


def test_a_second_scan_says_whom_it_waits_for_and_gives_up_clearly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    catalog = tmp_path / "catalog.duckdb"
    with Child(["-c", HOLD_STEP, str(catalog)]) as holder:
        assert holder.wait_for_hold(timeout=120) == "scan lock"
        expected = rf"another process \(pid {holder.process.pid}\) has been running scan"
        with pytest.raises(StepLockedError, match=expected), step_lock(catalog, "scan", timeout=0.5):
            pytest.fail("the lock was held by the other process")
        waited = capfd.readouterr().err
        assert waited.count("waiting for another scan") == 1 and f"(pid {holder.process.pid})" in waited
        holder.resume()  # it lets go once its block ends
        assert holder.finish(timeout=60)[0] == 0
    with step_lock(catalog, "scan", timeout=0):
        pass


def test_a_killed_holder_releases_the_step_lock(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.duckdb"
    with Child(["-c", HOLD_STEP, str(catalog)]) as holder:
        holder.wait_for_hold(timeout=120)
        holder.kill()
        assert holder.process.returncode == -signal.SIGKILL
    with step_lock(catalog, "scan", timeout=0):  # at once: the system released the flock with the process
        pass


def test_a_locked_catalog_says_that_it_waits_once_then_times_out(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "catalog.duckdb"
    Catalog(path).migrate()
    script = f"import duckdb; from tests.support.kill import hold; c = duckdb.connect({str(path)!r}); hold('open')"
    with Child(["-c", script]) as holder:
        assert holder.wait_for_hold(timeout=120) == "open"
        with pytest.raises(CatalogLockedError, match="locked by another process for more than 1s"):
            Catalog(path, lock_timeout=1.0).query("SELECT 1")
        err = capfd.readouterr().err
    notice = f"waiting for the catalog lock held by another process (pid {holder.process.pid}) ... up to 1s"
    assert err.count("waiting for the catalog lock") == 1 and notice in err, err
