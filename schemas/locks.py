"""Step locks: one process at a time runs a given step (a scan, ...) against one catalog.

The catalog's own lock covers one transaction; a step is many transactions. Two processes running the same step
at once would interleave them: the second removes the first's half-done rows, and both insert the same findings
(a primary-key error). A step lock is held for the whole step: the second process says that it waits, and
whose turn it is, then runs once the first is done (and usually finds the result there to reuse).

The lock is an advisory ``flock`` on ``<catalog folder>/.locks/<step>.lock`` (the file holds the holder's pid).
The system releases it when its process ends, however it ends, so a killed process never leaves it held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from schemas.errors import Failure
from schemas.progress import log

LOCKS_DIR = ".locks"


class StepLockedError(Failure):
    """Another process kept running the same step for longer than this one would wait."""


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f" (pid {pid})"
    return ""


@contextlib.contextmanager
def step_lock(catalog_path: Path, step: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the lock of ``step`` for the catalog at ``catalog_path``; wait for it (``timeout`` seconds at most,
    None: as long as the holder runs), saying once on stderr that and whom it waits for."""
    folder = catalog_path.parent / LOCKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{step}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        started = time.monotonic()
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout is not None and time.monotonic() - started >= timeout:
                    raise StepLockedError(
                        f"another process{_holder(fd)} has been running {step} on {catalog_path} for more than "
                        f"{timeout:.0f}s"
                    ) from None
                if not waiting:
                    log(f"waiting for another {step}{_holder(fd)} on this catalog to finish")
                    waiting = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the file releases the lock
