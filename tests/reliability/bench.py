"""The suite's workbench: one workspace at a fixed path, saved states to restore it to, and the real CLI.

The workspace always lives at the same path (``<root>/ws``): a trial restores a saved state into it, so the paths
the catalog stores (absolute or relative) stay right. Commands run in a child process with the fault points of
``tests.reliability.inject`` (the real CLI, numbered events), so any of them can be held and killed: forked by a
warm server (``tests.reliability.forkserver``), or started afresh as ``python -m tests.reliability.inject``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.catalog import CATALOG_NAME, Catalog
from tests.reliability.forkserver import ForkedChild, ForkServer
from tests.reliability.inject import AT_ENV, COUNTS_ENV
from tests.support.kill import Child, HeldProcess


@dataclass
class Run:
    """One finished CLI run."""

    code: int
    stdout: str
    stderr: str
    counts: dict[str, int] = field(default_factory=dict)  # events of each kind (tests.reliability.inject)

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def error_line(self) -> str:
        """The last line the run printed on stderr."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclass
class Bench:
    root: Path
    env: dict[str, str] = field(default_factory=dict)  # extra environment of every child
    server: ForkServer | None = None  # None: each command is a new Python process

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def ws(self) -> Path:
        return self.root / "ws"

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.ws / CATALOG_NAME)

    def saved(self, name: str) -> Path:
        """The copy of the workspace saved as ``name``."""
        return self.root / "saved" / name

    def save(self, name: str) -> None:
        """Keep a copy of the workspace as it is now under ``name``."""
        shutil.rmtree(self.saved(name), ignore_errors=True)
        shutil.copytree(self.ws, self.saved(name), symlinks=True)

    def restore(self, name: str | None, keep: tuple[str, ...] = (), source: Bench | None = None) -> None:
        """Put the workspace back to the state saved as ``name`` (None: no workspace at all), by this bench or by
        ``source``. Entries named in ``keep`` (e.g. ``argilla``, the review server's live database) are left as
        they are."""
        if self.ws.exists():
            for entry in self.ws.iterdir():
                if entry.name in keep:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        if name is None:
            if not keep:
                shutil.rmtree(self.ws, ignore_errors=True)
            return
        self.ws.mkdir(parents=True, exist_ok=True)
        for entry in (source or self).saved(name).iterdir():
            if entry.name in keep:
                continue
            target = self.ws / entry.name
            if entry.is_dir():
                shutil.copytree(entry, target, symlinks=True)
            else:
                shutil.copy2(entry, target)

    def spawn(
        self, *args: str, fault: str | None = None, env: dict[str, str] | None = None, counts: Path | None = None
    ) -> HeldProcess:
        """``refinery --workspace WS --quiet ARGS`` in a child; ``fault``: hold at that event (``KIND:N``);
        ``counts``: where the child writes how many events of each kind it went through, if it ends by itself."""
        argv = ["--workspace", str(self.ws), "--quiet", *args]
        extra = {"REFINERY_PROGRESS": "0", **(env or {})}
        if self.server is not None:
            return ForkedChild(self.server, argv, extra, self.root, at=fault, counts=counts)
        extra.update(self.env)
        if fault is not None:
            extra[AT_ENV] = fault
        if counts is not None:
            extra[COUNTS_ENV] = str(counts)
        return Child(["-m", "tests.reliability.inject", *argv], env=extra, cwd=self.root)

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 900.0) -> Run:
        """Run ``refinery ARGS`` to its end (no fault); with the number of events of each kind it went through."""
        handle, name = tempfile.mkstemp(prefix="refinery-counts-", suffix=".json")  # off the workspace's disk
        os.close(handle)
        counts_file = Path(name)
        try:
            with self.spawn(*args, env=env, counts=counts_file) as child:
                code, stdout, stderr = child.finish(timeout)
            text = counts_file.read_text()
        finally:
            counts_file.unlink(missing_ok=True)
        return Run(code, stdout, stderr, json.loads(text) if text else {})

    def audit(self) -> tuple[bool, str]:
        """``refinery audit`` (the real CLI, in this process: a child would spend most of its time starting):
        (clean, the problems in one line)."""
        report, code = self.audit_report()
        if report is None:
            return False, f"audit exited {code} without a report"
        problems = [f"{p['kind']} {p['artifact']}: {p['detail']}" for p in report.get("problems", [])]
        return code == 0 and report.get("ok") is True, "; ".join(problems)[:300]

    def audit_report(self) -> tuple[dict[str, Any] | None, int]:
        """``refinery audit --json``: its report (None if it printed none) and its exit code."""
        from tests.support.cli import invoke_cli

        result = invoke_cli(self.ws, "audit", "--json")
        try:
            report = json.loads(result.stdout)
        except ValueError:
            report = None
        return report if isinstance(report, dict) else None, result.exit_code


def cpu_env() -> dict[str, str]:
    """Children share the machine: one torch thread each, no telemetry or downloads.

    And one string-hash seed: peft writes ``target_modules`` (a set) into ``adapter_config.json`` in hash order,
    so without it two identical training runs write that file with the modules in another order.
    """
    return {
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
