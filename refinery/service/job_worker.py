"""The job dispatcher of `refinery serve`: one job at a time, each the real CLI in a child process.

DuckDB lets one process write a catalog at a time, so the server runs jobs one after the other (docs/SERVICE.md,
"Jobs and the one-writer design"). A thread in the server takes the oldest queued job, marks it running and starts
``python -m refinery.cli --workspace ROOT <command> ... --json`` with ``REFINERY_ACTOR`` set to the name of the
token that submitted it and ``REFINERY_PROGRESS_FILE`` pointing into the job's folder. The command's stdout (one
JSON object) becomes the job's result, its stderr the job's log (``<workspace>/jobs/<id>/log.txt``).

The child runs in its own process group (a cancel signals the whole group: SIGTERM, then SIGKILL after a grace
period) and gets SIGKILL from the kernel when the server dies (``PR_SET_PDEATHSIG``), so a killed server leaves no
job running. :meth:`JobDispatcher.recover`, called at start, fails the jobs a killed server left marked running;
every CLI step is atomic under SIGKILL, so nothing they wrote is half-done.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eval.registry import ACTOR_ENV  # read by actor(): every write that records who did it
from refinery.service.jobs import (
    SERVER_STOPPED,
    Job,
    JobFiles,
    JobNotFound,
    JobState,
    cancel_queued,
    fail_running,
    finish,
    get_job,
    job_folder,
    mark_running,
    next_queued,
    record_pid,
)
from refinery.workspace import WORKSPACE_ENV, Workspace
from schemas.errors import InputError
from schemas.progress import PROGRESS_FILE_ENV

LOG_NAME = "log.txt"
PROGRESS_NAME = "progress.json"
STDOUT_NAME = "stdout.json"
_PR_SET_PDEATHSIG = 1


def _death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel to SIGKILL the child when the server's thread that started it dies
    (Linux; None elsewhere). libc's ``prctl`` is looked up here, before any fork."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return arm


class JobDispatcher:
    """Runs queued jobs of one workspace, one at a time, in a daemon thread (:meth:`start`, :meth:`stop`)."""

    def __init__(
        self,
        workspace: Workspace,
        data_dirs: Sequence[Path] = (),
        *,
        grace_s: float = 10.0,
        poll_s: float = 1.0,
    ) -> None:
        self.workspace = workspace
        self.data_dirs = tuple(Path(d).resolve() for d in data_dirs)
        self.grace_s = grace_s
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards the three fields below
        self._current: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._cancelled_by: str | None = None
        self._thread: threading.Thread | None = None
        self._preexec = _death_signal()

    # ------------------------------------------------------------------------------------------ life cycle

    def recover(self) -> list[str]:
        """Fail the jobs a previous server left marked running (it was killed); SIGKILL any child of theirs that
        is somehow still alive. The ids of those jobs."""
        stale = fail_running(self.workspace.catalog)
        for job in stale:
            if job.pid is not None and _is_our_child(job.pid, self.workspace.root):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.pid, signal.SIGKILL)
        return [job.job_id for job in stale]

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="refinery-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; a running job's child is stopped and the job failed (:data:`SERVER_STOPPED`)."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            process = self._process
        if process is not None:
            self._terminate(process)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    @property
    def running_job(self) -> str | None:
        with self._lock:
            return self._current

    # ------------------------------------------------------------------------------------------ cancel

    def cancel(self, job_id: str, by: str) -> Job:
        """Cancel a queued job at once, or stop a running one (SIGTERM to its process group, SIGKILL after the
        grace period; the job ends 'cancelled'). A finished job is returned as it is."""
        catalog = self.workspace.catalog
        if cancel_queued(catalog, job_id, by):
            return get_job(catalog, job_id)
        with self._lock:
            process = None
            if self._current == job_id:
                self._cancelled_by = by  # before the child starts: it never does
                process = self._process
        if process is not None:
            threading.Thread(target=self._terminate, args=(process,), daemon=True).start()
        return get_job(catalog, job_id)

    def _terminate(self, process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(self.grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    # ------------------------------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                job = next_queued(self.workspace.catalog)
            except Exception as exc:  # a catalog locked for long: say so in the server's log, try again
                print(f"refinery jobs: cannot read the job queue: {exc}", file=sys.stderr, flush=True)
                job = None
            if job is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception as exc:  # a bug or a catalog error while starting or recording: the job fails
                why = f"the server could not run it: {_one_line(str(exc))}"
                with contextlib.suppress(Exception):
                    finish(self.workspace.catalog, job.job_id, "failed", None, None, why)

    def _run(self, job: Job) -> None:
        with self._lock:
            self._current = job.job_id
            self._cancelled_by = None
        try:
            self._start_and_wait(job)
        finally:
            with self._lock:
                self._process = None
                self._current = None
                self._cancelled_by = None

    def _start_and_wait(self, job: Job) -> None:
        catalog = self.workspace.catalog
        root = self.workspace.root
        folder = job_folder(root, job.job_id)
        folder.mkdir(parents=True, exist_ok=True)
        if not mark_running(catalog, job.job_id):
            return  # cancelled between the look and now
        try:
            arguments = job.parsed_params().arguments(JobFiles(root, self.data_dirs, folder))
        except (InputError, ValueError) as exc:  # a file removed since it was submitted
            finish(catalog, job.job_id, "failed", None, None, _one_line(str(exc)))
            return
        command = [sys.executable, "-m", "refinery.cli", "--workspace", str(root), *arguments]
        env = {
            **os.environ,
            WORKSPACE_ENV: str(root),
            ACTOR_ENV: job.created_by,
            PROGRESS_FILE_ENV: str(folder / PROGRESS_NAME),
            "PYTHONUNBUFFERED": "1",
        }
        with self._lock:
            if self._stopping.is_set() or self._cancelled_by is not None:
                state: JobState = "failed" if self._cancelled_by is None else "cancelled"
                why = SERVER_STOPPED if self._cancelled_by is None else f"cancelled by {self._cancelled_by}"
                finish(catalog, job.job_id, state, None, None, why)
                return
            with open(folder / LOG_NAME, "ab") as log, open(folder / STDOUT_NAME, "wb") as out:
                log.write(f"$ refinery {' '.join(arguments)}\n".encode())
                log.flush()
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=log, env=env, cwd=root,
                    start_new_session=True, preexec_fn=self._preexec,  # prctl only, see _death_signal
                )  # fmt: skip
            self._process = process
        record_pid(catalog, job.job_id, process.pid)
        code = process.wait()
        with self._lock:
            cancelled_by = self._cancelled_by
        state, result, error = _outcome(code, folder, cancelled_by, self._stopping.is_set())
        finish(catalog, job.job_id, state, code, result, error)


def _outcome(
    code: int, folder: Path, cancelled_by: str | None, stopping: bool
) -> tuple[JobState, dict[str, Any] | None, str | None]:
    """The state, result and error of a finished child: its stdout is the CLI's one JSON object (the result, or
    ``{"error": ..., "exit_code": ...}``); a failure without one is explained by the last line of its log."""
    printed = _json_object((folder / STDOUT_NAME).read_text(encoding="utf-8", errors="replace"))
    is_error = printed is not None and set(printed) == {"error", "exit_code"}
    result = None if is_error else printed
    if cancelled_by is not None:
        return "cancelled", result, f"cancelled by {cancelled_by}"
    if code == 0:
        return "succeeded", result, None
    if stopping and code < 0:
        return "failed", result, SERVER_STOPPED
    if is_error and printed is not None:
        return "failed", None, _one_line(str(printed["error"]))
    if code < 0:
        return "failed", result, f"the command was killed by signal {-code}"
    if result is not None and result.get("verdict") not in (None, "pass"):  # an eval that the gate failed
        return "failed", result, _one_line(f"the gate's verdict is {result['verdict']}: {result.get('reason') or ''}")
    last = _last_log_line(folder / LOG_NAME)
    return "failed", result, f"exit {code}" + (f": {last}" if last else "")


def _json_object(text: str) -> dict[str, Any] | None:
    text = text.strip()
    if not text:
        return None
    with contextlib.suppress(json.JSONDecodeError):
        found = json.loads(text)
        return found if isinstance(found, dict) else None
    for line in reversed(text.splitlines()):  # something else was printed before the object
        with contextlib.suppress(json.JSONDecodeError):
            found = json.loads(line)
            if isinstance(found, dict):
                return found
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _last_log_line(path: Path) -> str | None:
    lines = [line for line in log_tail(path, 20) if line.strip()]
    return _one_line(lines[-1]) if lines else None


def log_tail(path: Path, lines: int = 50, max_bytes: int = 16_384) -> list[str]:
    """The last ``lines`` lines of a job's log (read from its last ``max_bytes`` bytes)."""
    if not path.is_file():
        return []
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - max_bytes))
        text = handle.read().decode("utf-8", errors="replace")
    found = text.splitlines()
    if size > max_bytes and found:
        found = found[1:]  # the first line is cut
    return found[-lines:]


def read_progress(path: Path) -> dict[str, Any] | None:
    """A job's progress file (``schemas.progress``'s REFINERY_PROGRESS_FILE), or None."""
    with contextlib.suppress(OSError, json.JSONDecodeError):
        found = json.loads(path.read_text(encoding="utf-8"))
        return found if isinstance(found, dict) else None
    return None


def _is_our_child(pid: int, root: Path) -> bool:
    """Whether ``pid`` is still a job child of this workspace (a refinery CLI with this workspace)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"refinery.cli" in argv and str(root).encode() in argv


def job_files(root: Path, job_id: str) -> tuple[Path, Path]:
    """A job's log and progress files."""
    folder = job_folder(root, job_id)
    return folder / LOG_NAME, folder / PROGRESS_NAME


__all__ = ["JobDispatcher", "JobNotFound", "job_files", "log_tail", "read_progress"]
