"""One progress-bar helper for every package: rich bars on stderr, silent when asked.

Library code reports progress through :func:`progress`; it never prints. Set ``REFINERY_PROGRESS=0`` to
silence bars (tests, scripts); logs and bars always go to stderr so ``--json`` output stays clean.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console = Console(stderr=True)


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


def progress_enabled() -> bool:
    return os.environ.get("REFINERY_PROGRESS", "1") not in ("0", "false", "no")


@contextlib.contextmanager
def progress(description: str, total: float | None = None) -> Iterator[Ticker]:
    """A progress bar on stderr: ``with progress("ingest", total=n) as bar: bar.advance()``."""
    if not progress_enabled():
        yield _NullTicker()
        return
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
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
