"""A worker killed on purpose, for the fault tests and `benchmarks/bench_scale.py --kill-worker`.

``REFINERY_FAULT_KILL_WORKER=STAGE:SHARD`` (read by the driver when a stage starts, and sent with the task) makes the
task of shard ``SHARD`` of stage ``STAGE`` end its own worker process (``os._exit``) the first time it runs, as a
kill -9 or a lost machine would; a marker file under ``REFINERY_FAULT_DIR`` (default: the system temp folder) records
that it happened, so the retry runs normally. Deterministic: the same shard dies once, whatever the scheduling.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KillOnce:
    stage: str
    shard: int
    marker: str

    def strike(self, stage: str, shard: int) -> None:
        """End this process if it runs the doomed shard for the first time."""
        if (stage, shard) != (self.stage, self.shard):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # killed once already: the retry runs
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        os._exit(137)


def planned_kill() -> KillOnce | None:
    """The kill ``REFINERY_FAULT_KILL_WORKER`` asks for, if any."""
    spec = os.environ.get("REFINERY_FAULT_KILL_WORKER")
    if not spec:
        return None
    stage, _, shard = spec.rpartition(":")
    folder = Path(os.environ.get("REFINERY_FAULT_DIR") or tempfile.gettempdir())
    return KillOnce(stage, int(shard), str(folder / f"refinery-killed-{stage}-{shard}"))
