"""Run the real ``refinery`` CLI with numbered fault points: ``python -m tests.reliability.inject ARGS...``.

Test code only: before the CLI is imported, this module wraps the few functions every stage goes through, and
each call of a wrapper is an *event* of one kind:

- ``commit``: inside a catalog write transaction, after its statements, before its COMMIT (the lock is held);
- ``committed``: after a catalog write transaction committed;
- ``staged``: an artifact folder (snapshot, adapter, eval, checkpoint, ...) is complete in its staging folder,
  not yet renamed to its final name;
- ``renamed``: the folder has its final name; whatever the caller does next (register it) has not happened;
- ``file``: a file written atomically (a manifest, a cache entry) is in place;
- ``log``: a log line was printed;
- ``tick``: a progress bar advanced (rows read, checks run, training steps, generated batches).

``REFINERY_FAULT_SET=MODULE.NAME=INT,...``: set module constants first (smaller write chunks, so that one
command has more transactions to be killed between; they change no result).
``REFINERY_FAULT_FSIZE=BYTES``: no file may grow past BYTES (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored, so the
write fails with EFBIG): a full disk for machines where the suite may not mount a small tmpfs.
``REFINERY_FAULT_COUNTS=FILE``: at exit, write the number of events of each kind to FILE (JSON).
``REFINERY_FAULT_AT=KIND:N``: at the N-th event of KIND, hold (``tests.support.kill.hold``): print the holding
line and block until the parent SIGKILLs the process. The same code and inputs give the same events in the same
order, so a kill point chosen from the counts of an uninterrupted run is reached again, exactly.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.kill import hold

KINDS = ("commit", "committed", "staged", "renamed", "file", "log", "tick")
AT_ENV = "REFINERY_FAULT_AT"
COUNTS_ENV = "REFINERY_FAULT_COUNTS"
SET_ENV = "REFINERY_FAULT_SET"
FSIZE_ENV = "REFINERY_FAULT_FSIZE"

_counts: Counter[str] = Counter()
_target: tuple[str, int] | None = None


def _event(kind: str, what: str) -> None:
    _counts[kind] += 1
    if _target is not None and _target == (kind, _counts[kind]):
        hold(f"{kind}:{_counts[kind]} {what}")


def aim(at: str | None) -> None:
    """Hold at the event ``KIND:N`` (None: nowhere); the counts start from zero."""
    global _target
    _counts.clear()
    _target = None
    if at:
        kind, _, n = at.partition(":")
        if kind not in KINDS or not n.isdigit():
            raise SystemExit(f"{AT_ENV}={at!r}: expected KIND:N with KIND one of {', '.join(KINDS)}")
        _target = (kind, int(n))


def write_counts(path: str) -> None:
    Path(path).write_text(json.dumps(dict(_counts)), encoding="utf-8")


def install() -> None:
    """Wrap the catalog, atomic-write and progress functions (before anything imports them by name)."""
    import schemas.atomic as atomic
    import schemas.progress as progress
    from schemas.catalog import Catalog

    real_write = Catalog.write

    @contextlib.contextmanager
    def write(self: Catalog) -> Iterator[Any]:
        with real_write(self) as con:
            yield con
            _event("commit", "inside a catalog transaction, before its commit")
        _event("committed", "after a catalog transaction")

    real_directory = atomic.atomic_directory

    @contextlib.contextmanager
    def atomic_directory(final: Path) -> Iterator[Path]:
        with real_directory(final) as staging:
            yield staging
            _event("staged", f"{final.parent.name}/{final.name} staged, not renamed")
        _event("renamed", f"{final.parent.name}/{final.name} renamed")

    real_bytes = atomic.write_bytes_atomic

    def write_bytes_atomic(path: Path, data: bytes) -> None:
        real_bytes(path, data)
        _event("file", f"{path.name} written")

    def write_text_atomic(path: Path, text: str) -> None:
        write_bytes_atomic(path, text.encode("utf-8"))

    real_progress, real_log = progress.progress, progress.log

    class Ticker:
        """The real ticker, with an event at each advance (other methods pass through)."""

        def __init__(self, inner: Any, description: str) -> None:
            self._inner = inner
            self._description = description

        def advance(self, *args: Any, **kwargs: Any) -> None:
            self._inner.advance(*args, **kwargs)
            _event("tick", self._description)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    @contextlib.contextmanager
    def counted_progress(*args: Any, **kwargs: Any) -> Iterator[Any]:
        description = str(args[0] if args else kwargs.get("description", ""))
        with real_progress(*args, **kwargs) as ticker:
            yield Ticker(ticker, description)

    def log(message: str, *args: Any, **kwargs: Any) -> None:
        real_log(message, *args, **kwargs)
        _event("log", message[:60])

    Catalog.write = write  # type: ignore[method-assign]
    atomic.atomic_directory = atomic_directory
    atomic.write_bytes_atomic = write_bytes_atomic
    atomic.write_text_atomic = write_text_atomic
    progress.progress = counted_progress
    progress.log = log


def set_constants(assignments: str) -> None:
    """``module.NAME=INT,...``: each module imported (after :func:`install`) and its constant replaced."""
    import importlib

    for assignment in filter(None, assignments.split(",")):
        target, _, value = assignment.partition("=")
        module_name, _, name = target.rpartition(".")
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            raise SystemExit(f"{SET_ENV}: {module_name} has no {name}")
        setattr(module, name, int(value))


def limit_file_size(limit: str) -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))


def main() -> None:
    install()
    aim(os.environ.get(AT_ENV))
    if counts := os.environ.get(COUNTS_ENV):
        atexit.register(write_counts, counts)
    set_constants(os.environ.get(SET_ENV, ""))
    if limit := os.environ.get(FSIZE_ENV):
        limit_file_size(limit)
    sys.argv = ["refinery", *sys.argv[1:]]
    from refinery.cli import main as refinery_main  # after install: every module binds the wrapped functions

    refinery_main()


if __name__ == "__main__":
    main()
