"""Starting and stopping `refinery serve` (the real command in a subprocess): it says where it listens, answers
/healthz and /docs, stops on SIGTERM or Ctrl-C with exit 0 and frees its port (a restart on the same port works);
a port in use or a folder without a catalog is exit 2 with one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.cli import run_cli
from tests.support.require import require_module
from tests.support.service import ROOT, running_service


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("fastapi", "pip install 'refinery[service]'")
    folder = tmp_path_factory.mktemp("serve")
    (folder / "data.jsonl").write_text(json.dumps({"instruction": "hi", "output": "hello"}) + "\n")
    run_cli(folder / "ws", "ingest", str(folder / "data.jsonl"))
    return folder / "ws"


def _port_is_free(port: int) -> bool:
    """Nothing listens there and a server may bind it (as servers do: connections the old one closed may still
    be in TIME_WAIT, which SO_REUSEADDR allows)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "refinery.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_it_with_exit_0_and_frees_the_port(ws: Path, sig: signal.Signals) -> None:
    with running_service(ws) as service:
        port = service.port
        assert not _port_is_free(port)
        assert httpx.get(f"{service.base_url}/healthz").json()["status"] == "ok"
        docs = httpx.get(f"{service.base_url}/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        schema = httpx.get(f"{service.base_url}/openapi.json").json()
        assert {"/healthz", "/sql", "/lineage/{identifier}", "/jobs", "/tokens"} <= set(schema["paths"])
        service.process.send_signal(sig)
        assert service.process.wait(30) == 0, service.log()
    assert _port_is_free(port)
    log = service.log()
    assert "Application shutdown complete" in log and "Traceback" not in log
    # the first line on stdout was the --json object: where it listens, its pid and workspace
    first = json.loads(service.out_path.read_text().splitlines()[0])
    assert first == {"url": service.base_url, "pid": service.pid, "workspace": str(ws.resolve())}
    with running_service(ws) as again:  # and a new server starts over the same workspace
        assert httpx.get(f"{again.base_url}/healthz").status_code == 200


def test_a_port_in_use_is_exit_2_in_one_line(ws: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve("--workspace", str(ws), "serve", "--port", str(port), "--json")
    assert result.returncode == 2, result.stderr
    error = json.loads(result.stdout)
    assert error["exit_code"] == 2 and f"cannot listen on 127.0.0.1:{port}" in error["error"]


def test_a_folder_without_a_catalog_is_exit_2(tmp_path: Path) -> None:
    result = _serve("--workspace", str(tmp_path / "nothing"), "serve", "--port", "0", "--json")
    assert result.returncode == 2 and "no workspace at" in json.loads(result.stdout)["error"]
    assert not (tmp_path / "nothing").exists()


def test_a_missing_data_dir_is_exit_2(ws: Path, tmp_path: Path) -> None:
    result = _serve("--workspace", str(ws), "serve", "--port", "0", "--data-dir", str(tmp_path / "nope"), "--json")
    assert result.returncode == 2 and "no such folder" in json.loads(result.stdout)["error"]
