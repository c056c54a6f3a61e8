"""A real local Ray cluster for the executor tests: `ray start --head --block` on a free port with a fixed number of
CPUs, stopped (its process group) when the block ends."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.require import missing, require_module

SCALE_EXTRA = "pip install 'refinery[scale]' (make install)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray_cli() -> str:
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if found is None:
        missing(f"the ray command is not installed: {SCALE_EXTRA}")
    return str(found)


@contextmanager
def local_ray_cluster(num_cpus: int = 2) -> Iterator[str]:
    """Start a head node with ``num_cpus`` CPUs; yield its address (HOST:PORT) for ``--ray-address``.

    Ray 2.59+ starts clusters with token authentication, and a driver that connects by address must then have
    ``RAY_AUTH_MODE=token`` in its environment before it imports ray (docs/SCALE.md). This test cluster listens on
    127.0.0.1 only and runs without it, so the test process, which may have imported ray already, can connect.
    """
    require_module("ray", SCALE_EXTRA)
    ray = _ray_cli()
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    start = [ray, "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}",
             "--include-dashboard=false", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]  # fmt: skip
    # --block: the head's processes live as long as this one, in a process group of their own, so stopping it stops
    # this cluster only (`ray stop` would stop every Ray process on the machine)
    head = subprocess.Popen(start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_until_listening(head, port)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


def _wait_until_listening(head: subprocess.Popen[bytes], port: int, timeout: float = 180.0) -> None:
    """Until the head's GCS answers on ``port`` and the node has registered (``ray start`` says it started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            err = head.stderr.read().decode(errors="replace") if head.stderr else ""
            raise RuntimeError(f"ray start exited {head.returncode}: {err[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            time.sleep(3)  # the GCS answers before the raylet has registered the node's CPUs
            return
        time.sleep(0.5)
    raise RuntimeError(f"ray start did not listen on {port} within {timeout:.0f} s")
