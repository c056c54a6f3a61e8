"""`refinery review serve|stop`: a local Argilla server for a workspace.

argilla-server 2.8.0 runs from its own venv (its CLI needs click<8.2, which the training stack cannot take), by
default ``<refinery venv>/argilla-server`` (``make install`` creates it; otherwise it is created on first use),
or ``$REFINERY_ARGILLA_VENV``. The server keeps its SQLite database under ``<workspace>/argilla/home``, searches
with Refinery's SQL backend (``sql_search.py``, no Elasticsearch), and uses ``redis-server`` on a free port when
one is installed (started and stopped with the server), else an in-process substitute. PIDs, the URL and the
logs live in ``<workspace>/argilla``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from curation.review.connection import (
    OWNER_USERNAME,
    ReviewError,
    ReviewPaths,
    ReviewServerError,
    load_server_state,
    owner_credentials,
    save_server_state,
)
from schemas.progress import log, progress

SERVER_REQUIREMENTS = ("argilla-server==2.8.0", "click<8.2")
VENV_ENV = "REFINERY_ARGILLA_VENV"
REDIS_ENV = "REFINERY_REVIEW_REDIS"  # 'substitute' forces the in-process substitute
SEARCH_ENGINE = "refinery-sql"
LAUNCHER = Path(__file__).resolve().parent / "launcher.py"


def server_venv() -> Path:
    """Where the server's venv is (or will be created)."""
    if os.environ.get(VENV_ENV):
        return Path(os.environ[VENV_ENV]).expanduser().resolve()
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "argilla-server"
    return Path.home() / ".cache" / "refinery" / "argilla-server"


def ensure_server_venv(venv: Path | None = None) -> Path:
    """Create the server venv with argilla-server when it is missing (a few minutes, once); return its python."""
    venv = venv or server_venv()
    python = venv / "bin" / "python"
    if python.exists() and _has_server(python):
        return python
    log(f"creating the Argilla server venv at {venv} (argilla-server 2.8.0, once; a few minutes)")
    with progress("argilla-server venv", total=2) as bar:
        _run([sys.executable, "-m", "venv", str(venv)], "create the venv")
        bar.advance()
        _run([str(python), "-m", "pip", "install", "--quiet", *SERVER_REQUIREMENTS], "pip install argilla-server")
        bar.advance()
    return python


def _has_server(python: Path) -> bool:
    probe = subprocess.run([str(python), "-c", "import argilla_server"], capture_output=True, check=False)
    return probe.returncode == 0


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ReviewError(f"could not {what}: {done.stderr.strip()[-800:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _alive(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` runs and is ours (its command line contains ``marker``: no recycled pid is touched)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def _http_get(url: str, api_key: str | None = None, timeout: float = 2.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"X-Argilla-Api-Key": api_key} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _start_redis(paths: ReviewPaths) -> tuple[int, int] | None:
    """Start redis-server on a free port (no persistence); None when it is not installed or not wanted."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None or os.environ.get(REDIS_ENV) == "substitute":
        return None
    port = _free_port()
    with paths.redis_log.open("ab") as out:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(paths.root),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return proc.pid, port
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    _terminate(proc.pid, "redis-server")
    raise ReviewServerError(f"redis-server did not start; see {paths.redis_log}")


def serve(workspace: Path, port: int = 6900, host: str = "127.0.0.1", wait: float = 180.0) -> dict[str, Any]:
    """Start (or find running) the workspace's Argilla server; return its URL, PIDs and how to sign in."""
    paths = ReviewPaths(workspace)
    state = load_server_state(paths)
    if state and _alive(state.get("pid"), str(LAUNCHER)):
        return {**state, "already_running": True, "credentials_file": str(paths.credentials)}
    if state:  # the last server died (killed, crashed): stop the redis-server it left, then start afresh
        _terminate(state.get("redis_pid"), "redis-server")
    if _port_in_use(host, port):
        raise ReviewError(f"port {port} on {host} is in use: pick another with --port")
    python = ensure_server_venv()
    paths.home.mkdir(parents=True, exist_ok=True)
    credentials = owner_credentials(paths)
    redis = _start_redis(paths)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    env.update(
        ARGILLA_HOME_PATH=str(paths.home),
        ARGILLA_SEARCH_ENGINE=SEARCH_ENGINE,
        ARGILLA_REDIS_URL=f"redis://127.0.0.1:{redis[1] if redis else 6379}/0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_OFFLINE="1",
    )
    cmd = [str(python), str(LAUNCHER), "--host", host, "--port", str(port), "--credentials", str(paths.credentials)]
    if redis is None:
        cmd.append("--redis-substitute")
    with paths.server_log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    url = f"http://{host}:{port}"
    state = {
        "url": url,
        "pid": proc.pid,
        "redis_pid": redis[0] if redis else None,
        "redis": f"redis-server on port {redis[1]}" if redis else "in-process substitute",
        "search_engine": SEARCH_ENGINE,
        "venv": str(python.parent.parent),
        "log": str(paths.server_log),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_server_state(paths, state)
    (paths.root / "server.pid").write_text(f"{proc.pid}\n", encoding="utf-8")
    started = time.monotonic()
    try:
        _wait_ready(url, proc, paths, wait)
        status, me = _http_get(f"{url}/api/v1/me", credentials["api_key"])
        if status != 200:
            raise ReviewError(
                f"the server's owner {OWNER_USERNAME!r} has another API key than {paths.credentials} "
                "(was ARGILLA_API_KEY changed?): set the old key or remove the workspace's argilla/home"
            )
    except BaseException:
        stop(workspace)
        raise
    return {**state, "ready_seconds": round(time.monotonic() - started, 1), "username": me["username"],
            "credentials_file": str(paths.credentials), "already_running": False}  # fmt: skip


def _wait_ready(url: str, proc: subprocess.Popen[bytes], paths: ReviewPaths, wait: float) -> None:
    deadline = time.monotonic() + wait
    with progress("waiting for Argilla", total=None) as bar:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = paths.server_log.read_text(encoding="utf-8", errors="replace").splitlines()[-8:]
                raise ReviewServerError(f"the Argilla server exited ({proc.returncode}): {' | '.join(tail)}")
            with contextlib.suppress(OSError):
                status, body = _http_get(f"{url}/api/v1/version")
                if status == 200 and body:
                    return
            bar.advance()
            time.sleep(0.5)
    raise ReviewServerError(f"the Argilla server did not answer {url}/api/v1/version within {wait:.0f}s")


def _terminate(pid: int | None, marker: str, grace: float = 15.0) -> bool:
    """SIGTERM the process group of ``pid`` (ours only), SIGKILL after ``grace`` seconds; True if it ran."""
    if not _alive(pid, marker):
        return False
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid, marker):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _alive(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


def stop(workspace: Path) -> dict[str, Any]:
    """Stop the workspace's Argilla server and its redis-server; the database stays for the next serve."""
    paths = ReviewPaths(workspace)
    state = load_server_state(paths)
    if state is None:
        return {"stopped": False, "reason": "no server state in " + str(paths.root)}
    server = _terminate(state.get("pid"), str(LAUNCHER))
    redis = _terminate(state.get("redis_pid"), "redis-server")
    for path in (paths.state, paths.root / "server.pid"):
        path.unlink(missing_ok=True)
    return {"stopped": server, "redis_stopped": redis, "url": state.get("url")}
