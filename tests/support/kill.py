"""Kill a child process at an exact point: the protocol the kill tests and the reliability suite share.

The child, at the chosen point, calls :func:`hold`: it prints a line that starts with :data:`HOLDING` and blocks.
The parent reads the child's stdout until that line (:meth:`Child.wait_for_hold`), then SIGKILLs it
(:meth:`Child.kill`) or lets it go on (:meth:`Child.resume`). So the kill lands at exactly that point, whatever the
load on the machine; nothing in production code waits.

Parent side::

    with Child(["-c", CHILD_SCRIPT, ...]) as child:
        where = child.wait_for_hold()  # None: the child ended without reaching the point
        child.kill()  # or child.resume()

Child side (a script run with the repository on ``PYTHONPATH``)::

    from tests.support.kill import hold
    hold("after the first split")
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[2]
HOLDING = "holding"  # the first word of the line a child prints once it waits at the kill point


def hold(where: str) -> None:
    """Child side: announce ``where`` on stdout and block until the parent kills this process.

    If the parent sends SIGUSR1 instead (:meth:`Child.resume`), return and let the process go on.
    """
    resumed: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: resumed.append(signum))
    print(f"{HOLDING} {where}", flush=True)
    while not resumed:  # the parent kills the process here, or lets it go on
        time.sleep(0.05)
    signal.signal(signal.SIGUSR1, previous)


class NeverHeld(AssertionError):
    """The child ended (or timed out) without reaching its kill point."""


class HeldProcess(ABC):
    """A child process the parent can hold, kill or let go on: the parent's side of the protocol.

    Subclasses say how the process started (:class:`Child`: a new Python process) and how its stdout lines,
    signals and exit code reach the parent.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []  # every stdout line read so far

    @property
    @abstractmethod
    def pid(self) -> int: ...

    @abstractmethod
    def next_line(self, timeout: float) -> str | None:
        """The next stdout line (kept in :attr:`lines`); None at the end of the output or after ``timeout`` s."""

    @abstractmethod
    def poll(self) -> int | None:
        """The exit code (negative: the signal that ended it), or None while it runs."""

    @abstractmethod
    def wait(self, timeout: float) -> int:
        """The exit code, once the process has ended (``TimeoutError`` after ``timeout`` seconds)."""

    @abstractmethod
    def stderr(self) -> str:
        """Everything the process wrote to stderr so far."""

    @abstractmethod
    def close(self) -> None:
        """Kill the process if it still runs and remove its files."""

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def wait_for_hold(self, timeout: float = 600.0) -> str | None:
        """Read stdout until the child holds; return what it named (None if it ended or timed out first)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            line = self.next_line(left)
            if line is None:
                return None
            if line.startswith(HOLDING):
                return line[len(HOLDING) :].strip()
        return None

    def kill(self) -> None:
        """SIGKILL the child (it must die of that signal, not end by itself first)."""
        self.signal(signal.SIGKILL)
        code = self.wait(timeout=60)
        if code != -signal.SIGKILL:
            raise AssertionError(f"the child ended with {code} before the SIGKILL landed")

    def resume(self) -> None:
        """Let a holding child go on."""
        self.signal(signal.SIGUSR1)

    def finish(self, timeout: float = 600.0) -> tuple[int, str, str]:
        """Wait for the child to end: (exit code, its whole stdout, stderr)."""
        code = self.wait(timeout)
        while self.next_line(timeout=10) is not None:
            continue
        return code, "".join(self.lines), self.stderr()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Child(HeldProcess):
    """A new Python process (``python ARGS``, the repository on ``PYTHONPATH``) whose stdout lines are read in a
    thread; stderr goes to a temporary file."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        super().__init__()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self._stderr = tempfile.NamedTemporaryFile(prefix="child-stderr-", suffix=".txt", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def next_line(self, timeout: float) -> str | None:
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is not None:
            self.lines.append(line)
        return line

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"pid {self.pid} still runs after {timeout:.0f}s") from exc

    def stderr(self) -> str:
        self._stderr.flush()
        return Path(self._stderr.name).read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()
        Path(self._stderr.name).unlink(missing_ok=True)


def kill_at_hold(child: HeldProcess, timeout: float = 600.0) -> str:
    """Wait until ``child`` holds, SIGKILL it and return where it was; :class:`NeverHeld` if it never held."""
    where = child.wait_for_hold(timeout)
    if where is None:
        output = "".join(child.lines)[-2000:] + child.stderr()[-2000:]
        raise NeverHeld(f"the child never reached the kill point (exit {child.poll()}): {output}")
    child.kill()
    return where
