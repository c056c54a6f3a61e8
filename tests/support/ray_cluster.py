"""A real local Ray cluster for the executor tests: `ray start --head` on a free port with a fixed number of CPUs,
stopped (`ray stop`) when the block ends."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
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
    start = [ray, "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}", "--include-dashboard=false",
             "--disable-usage-stats", "--node-ip-address=127.0.0.1"]  # fmt: skip
    done = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ray start failed ({done.returncode}): {done.stderr[-2000:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)
