"""A warm process that forks one child per ``refinery`` command: ``python -m tests.reliability.forkserver``.

Starting Python and importing the CLI, DuckDB, pyarrow and torch costs 1 to 10 s per command, far more than the
small commands of the suite do; on a busy machine it is most of the suite's time. The server imports all of it
once, with the fault points of ``tests.reliability.inject`` installed first, and then forks a child per request.
Each child is a real process running the real CLI: it is held, killed and rerun like one started afresh.

Protocol, one JSON object per line. The parent writes ``{"argv", "env", "cwd", "at", "out", "err", "status",
"counts"}`` to the server's stdin; the server forks and answers ``{"pid": N}``. The child sets ``env``, moves to
``cwd``, sends its stdout and stderr to the files ``out`` and ``err``, holds at the event ``at`` (if any), runs
``refinery ARGV`` and, when it ends by itself, writes its event counts to ``counts`` and its exit code to
``status``. The server ignores SIGCHLD, so the kernel reaps its children: a child that is gone without a status
file was killed.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from tests.reliability import inject
from tests.support.kill import ROOT, HeldProcess

#: What the commands import lazily: imported by the server once, so no child pays for it.
WARM_MODULES = (
    "refinery.cli", "refinery.pipeline", "refinery.audit", "curation.checks", "curation.snapshot",
    "curation.ingest.pipeline", "curation.review.pull", "curation.review.push", "training.recipe",
    "training.base_model", "eval.runner", "torch", "transformers", "peft", "safetensors.torch",
)  # fmt: skip


def _child(request: dict[str, Any]) -> None:
    """In the forked child: run one command and end with ``os._exit`` (never return into the server's loop)."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the command's own subprocesses must be waited for
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        for fd, name in ((1, "out"), (2, "err")):
            target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
        if limit := request["env"].get(inject.FSIZE_ENV):
            inject.limit_file_size(limit)
        inject.aim(request.get("at"))
        sys.argv = ["refinery", *request["argv"]]
        from refinery.cli import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
            inject.write_counts(request["counts"])
            Path(request["status"]).write_text(str(code), encoding="utf-8")
        os._exit(code)


def serve() -> None:
    """The server's loop: warm up, then fork a child per request line until stdin closes."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read once, when those libraries are imported
    os.environ.setdefault("TQDM_DISABLE", "1")
    inject.install()
    inject.set_constants(os.environ.get(inject.SET_ENV, ""))
    for name in WARM_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), flush=True)


class ForkServer:
    """The parent's handle on a running server (started with the environment every child shares)."""

    def __init__(self, env: dict[str, str], timeout: float = 600.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.forkserver"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._answer(timeout)
        if "ready" not in ready:
            raise RuntimeError(f"the fork server did not start: {ready}")

    def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the server answers at once, or has died
        if not line:
            raise RuntimeError(f"the fork server exited ({self.process.wait(timeout=timeout)})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def fork(self, request: dict[str, Any]) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return int(self._answer(60)["pid"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class ForkedChild(HeldProcess):
    """One command run in a child of the fork server; its stdout is read from its file as it grows."""

    def __init__(
        self,
        server: ForkServer,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        at: str | None = None,
        counts: Path | None = None,
    ) -> None:
        super().__init__()
        self._folder = Path(tempfile.mkdtemp(prefix="refinery-child-"))
        self._out, self._err, self._status = (self._folder / n for n in ("out.txt", "err.txt", "status.txt"))
        self._out.touch()
        self._read_at = 0
        self._pending = ""
        self._code: int | None = None
        request = {
            "argv": argv, "env": env, "cwd": str(cwd), "at": at, "out": str(self._out), "err": str(self._err),
            "status": str(self._status), "counts": str(counts or self._folder / "counts.json"),
        }  # fmt: skip
        self._pid = server.fork(request)

    @property
    def pid(self) -> int:
        return self._pid

    def _alive(self) -> bool:
        try:
            os.kill(self._pid, 0)
        except ProcessLookupError:
            return False
        return True

    def poll(self) -> int | None:
        if self._code is None and not self._alive():
            text = self._status.read_text(encoding="utf-8") if self._status.is_file() else ""
            self._code = int(text) if text.strip() else -signal.SIGKILL  # gone without a word: killed
        return self._code

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"pid {self._pid} still runs after {timeout:.0f}s")
            time.sleep(0.02)
        return code

    def next_line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            with self._out.open("rb") as handle:
                handle.seek(self._read_at)
                chunk = handle.read()
            self._read_at += len(chunk)
            self._pending += chunk.decode("utf-8", errors="replace")
            if "\n" in self._pending:
                line, self._pending = self._pending.split("\n", 1)
                self.lines.append(line + "\n")
                return line + "\n"
            if self.poll() is not None and not chunk:
                if self._pending:  # the last line, without its newline
                    line, self._pending = self._pending, ""
                    self.lines.append(line)
                    return line
                return None
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def stderr(self) -> str:
        return self._err.read_text(encoding="utf-8", errors="replace") if self._err.is_file() else ""

    def close(self) -> None:
        if self.poll() is None:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                self.wait(timeout=60)
        for file in self._folder.iterdir():
            file.unlink()
        self._folder.rmdir()


if __name__ == "__main__":
    serve()
