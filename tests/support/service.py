"""The real `refinery serve` in a subprocess, for the service tests (tests/service/).

``running_service(root)`` starts ``refinery --workspace ROOT serve --port 0 --json`` (any free port on 127.0.0.1,
read back from its JSON line), waits until ``/healthz`` answers, and yields a :class:`Service`: its ``base_url``
and ``pid``, ``token(role)`` (a fresh token made with the real CLI), ``log()`` (everything the server wrote on
stdout and stderr so far) and ``kill9()``. On leaving, the server is stopped with SIGTERM, which must end it with
exit 0 (``stop()`` does this earlier and returns the exit code).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tests.support.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class Service:
    """A running `refinery serve`."""

    def __init__(self, process: subprocess.Popen[bytes], root: Path, log_path: Path, out_path: Path) -> None:
        self.process = process
        self.root = root
        self.log_path = log_path
        self.out_path = out_path
        self.base_url = ""
        self._tokens: dict[str, str] = {}

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def log(self) -> str:
        """What the server printed so far: stdout (its JSON line) and stderr (uvicorn's log, warnings)."""
        return self.out_path.read_text(errors="replace") + self.log_path.read_text(errors="replace")

    def token(self, role: str, name: str | None = None) -> str:
        """A token of ``role`` made with `refinery token create` (one per role and name, made on first use)."""
        key = f"{role}:{name}"
        if key not in self._tokens:
            made = run_cli(self.root, "token", "create", "--name", name or f"test-{role}", "--role", role)
            self._tokens[key] = made["token"]
        return self._tokens[key]

    def made_tokens(self) -> list[str]:
        """Every token :meth:`token` made so far."""
        return list(self._tokens.values())

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role)}"}

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.base_url:
            line = self.out_path.read_text(errors="replace").split("\n", 1)
            if len(line) == 2 and line[0].strip():
                self.base_url = json.loads(line[0])["url"]
                break
            self._still_running(deadline)
            time.sleep(0.05)
        while True:
            try:
                with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            self._still_running(deadline)
            time.sleep(0.05)

    def _still_running(self, deadline: float) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"refinery serve exited with {self.process.returncode}:\n{self.log()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"refinery serve was not ready after {START_TIMEOUT:.0f}s:\n{self.log()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait: the exit code (a server that does not stop is SIGKILLed and fails the caller)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                raise AssertionError(f"refinery serve did not stop within {timeout:.0f}s of SIGTERM") from None
        return self.process.returncode

    def kill9(self) -> None:
        """SIGKILL the server (its job children die with it) and wait for it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def running_service(
    root: Path, *, data_dirs: Sequence[Path] = (), env: Mapping[str, str] | None = None
) -> Iterator[Service]:
    """The real server over the workspace ``root`` (which must exist), stopped with SIGTERM at the end; the
    stop must succeed (exit 0) unless the test stopped or killed it itself."""
    folder = Path(tempfile.mkdtemp(prefix="refinery-serve-"))
    atexit.register(shutil.rmtree, folder, True)  # the log stays readable after the server stopped, until exit
    out_path, log_path = folder / "stdout.txt", folder / "stderr.txt"
    args = [sys.executable, "-m", "refinery.cli", "--workspace", str(root), "--quiet", "serve", "--port", "0"]
    for d in data_dirs:
        args += ["--data-dir", str(d)]
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), "REFINERY_PROGRESS": "0", **(env or {})}
    with out_path.open("wb") as out, log_path.open("wb") as err:
        process = subprocess.Popen([*args, "--json"], stdout=out, stderr=err, env=child_env, cwd=ROOT)
    service = Service(process, root, log_path, out_path)
    try:
        service.wait_ready()
        yield service
        if process.poll() is None:
            code = service.stop()
            assert code == 0, f"refinery serve exited with {code} on SIGTERM:\n{service.log()}"
    finally:
        service.kill9()
