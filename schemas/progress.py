"""One progress-bar helper for every package: rich bars on stderr, silent when asked.

Library code reports progress through :func:`progress`; it never prints. Set ``REFINERY_PROGRESS=0`` to
silence bars (tests, scripts); logs and bars always go to stderr so ``--json`` output stays clean. A bar counts
items, or bytes with ``unit="bytes"`` (shown as kB, MB, GB).

For programs that watch a command (the jobs of ``refinery serve``), ``REFINERY_PROGRESS_FILE=PATH`` also keeps
the current bar's state in PATH as one JSON object (``description``, ``done``, ``total``, ``unit``, ``final``,
``updated_at``), replaced atomically at most every half second and at the end of each bar, whether bars are
shown or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

_console = Console(stderr=True)

#: What a bar counts: items (None) or bytes.
Unit = Literal["bytes"] | None


def format_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units, as rich's download column)."""
    for name, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {name}"
    return f"{n:.0f} B"


class Ticker(Protocol):
    def advance(self, n: float = 1) -> None: ...

    def set_description(self, text: str) -> None: ...

    def set_total(self, total: float | None) -> None: ...


class _NullTicker:
    def advance(self, n: float = 1) -> None:
        return None

    def set_description(self, text: str) -> None:
        return None

    def set_total(self, total: float | None) -> None:
        return None


class _RichTicker:
    def __init__(self, bar: Progress, task: object) -> None:
        self._bar = bar
        self._task = task

    def advance(self, n: float = 1) -> None:
        self._bar.advance(self._task, n)  # type: ignore[arg-type]

    def set_description(self, text: str) -> None:
        self._bar.update(self._task, description=text)  # type: ignore[arg-type]

    def set_total(self, total: float | None) -> None:
        self._bar.update(self._task, total=total)  # type: ignore[arg-type]


class _LineTicker:
    """For logs and CI (stderr is not a terminal): one plain line at most every ``every`` seconds."""

    def __init__(self, description: str, total: float | None, unit: Unit = None, every: float = 10.0) -> None:
        self._description = description
        self._total = total
        self._unit = unit
        self._done = 0.0
        self._every = every
        self._started = time.monotonic()
        self._last = self._started

    def advance(self, n: float = 1) -> None:
        self._done += n
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self.emit()

    def set_description(self, text: str) -> None:
        self._description = text

    def set_total(self, total: float | None) -> None:
        self._total = total

    def emit(self, final: bool = False) -> None:
        elapsed = time.monotonic() - self._started
        if self._unit == "bytes":
            done = format_bytes(self._done) + (f" of {format_bytes(self._total)}" if self._total else "")
            rate = f", {format_bytes(self._done / elapsed)}/s" if elapsed > 0 and self._done else ""
        else:
            done = f"{self._done:g}" + (f"/{self._total:g}" if self._total else "")
            rate = f", {self._done / elapsed:.3g}/s" if elapsed > 0 and self._done else ""
        state = "done" if final else "..."
        _console.print(f"{self._description}: {done} in {elapsed:.0f}s{rate} {state}", highlight=False, soft_wrap=True)


#: A file that holds the current bar's state as JSON, for a program that watches the command (see the docstring).
PROGRESS_FILE_ENV = "REFINERY_PROGRESS_FILE"


class _FileTicker:
    """Passes every call on to the shown bar and keeps the bar's state in a JSON file (at most every ``every``
    seconds, and at the end)."""

    def __init__(self, path: Path, inner: Ticker, description: str, total: float | None, unit: Unit) -> None:
        self._path = path
        self._inner = inner
        self._state: dict[str, object] = {"description": description, "done": 0.0, "total": total, "unit": unit}
        self._last = 0.0

    def advance(self, n: float = 1) -> None:
        self._inner.advance(n)
        self._state["done"] = float(self._state["done"]) + n  # type: ignore[arg-type]
        self.write()

    def set_description(self, text: str) -> None:
        self._inner.set_description(text)
        self._state["description"] = text
        self.write()

    def set_total(self, total: float | None) -> None:
        self._inner.set_total(total)
        self._state["total"] = total
        self.write()

    def write(self, final: bool = False, every: float = 0.5) -> None:
        now = time.monotonic()
        if not final and now - self._last < every:
            return
        self._last = now
        state = {**self._state, "final": final, "updated_at": time.time()}
        temporary = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        try:  # a watcher's convenience: never fail the command over it
            temporary.write_text(json.dumps(state), encoding="utf-8")
            os.replace(temporary, self._path)
        except OSError:
            return


def progress_enabled() -> bool:
    return os.environ.get("REFINERY_PROGRESS", "1") not in ("0", "false", "no")


@contextlib.contextmanager
def progress(description: str, total: float | None = None, unit: Unit = None) -> Iterator[Ticker]:
    """A progress bar on stderr: ``with progress("ingest", total=n) as bar: bar.advance()``; ``unit="bytes"``
    shows the counts as sizes (``3.1 MB of 12.0 MB``) and the rate per second. With ``$REFINERY_PROGRESS_FILE``
    set, its state is also kept in that file (see the module docstring)."""
    sink = os.environ.get(PROGRESS_FILE_ENV)
    if not sink:
        with _bar(description, total, unit) as ticker:
            yield ticker
        return
    with _bar(description, total, unit) as shown:
        watched = _FileTicker(Path(sink), shown, description, total, unit)
        watched.write(every=0.0)
        yield watched
        watched.write(final=True)


@contextlib.contextmanager
def _bar(description: str, total: float | None, unit: Unit) -> Iterator[Ticker]:
    if not progress_enabled():
        yield _NullTicker()
        return
    if not _console.is_terminal:
        ticker = _LineTicker(description, total, unit)
        yield ticker
        ticker.emit(final=True)
        return
    counts = [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield _RichTicker(bar, task)


def log(message: str) -> None:
    """A human-readable line on stderr (what happened and where the output went)."""
    _console.print(message, highlight=False)
