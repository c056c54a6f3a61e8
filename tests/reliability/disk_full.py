"""A disk that fills up mid-write: one clear error, nothing corrupted, and the rerun succeeds once space is freed.

The workspace sits on a small tmpfs of its own; a filler file leaves a seeded number of free bytes, fewer than the
command needs (what its reference run added to the workspace). The command must then fail with exit 1 and one
line on stderr (no traceback); with the filler removed, ``refinery audit`` must find nothing half-written or
dangling (a complete artifact folder whose registration ran out of space is allowed: the rerun registers it), and
the rerun must reach the reference result with ``refinery audit`` clean.

Mounting needs root. Elsewhere the same trials run with an injected fault instead: the child may not grow any file
past the same seeded number of bytes (``RLIMIT_FSIZE``, ``tests.reliability.inject``; the write fails with EFBIG,
"File too large"). The row says which of the two ran.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.reliability.bench import Bench
from tests.reliability.fingerprint import ARTIFACT_FOLDERS, differences, fingerprint
from tests.reliability.inject import FSIZE_ENV
from tests.reliability.kill_trials import half_written
from tests.reliability.rows import Row


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[str, ...]
    before: str | None  # saved states of the chain's bench
    after: str


def steps(train_args: tuple[str, ...]) -> list[Step]:
    """The commands tried, in the order the trials cycle through them."""
    snapshot = Step("snapshot create", ("snapshot", "create"), "scanned", "snapshotted")
    scan = Step("scan", ("scan",), "ingested", "scanned")
    train = Step("train", train_args, "snapshotted", "trained")
    return [snapshot, scan, train] * 2  # each twice, with another number of free bytes


def _size(folder: Path | None) -> int:
    if folder is None or not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _needed(before: Path | None, after: Path) -> int:
    """About how many bytes the step writes: the artifact folders it adds, or (a step that only writes the catalog)
    a quarter of the catalog's growth (DuckDB's file grows by whole blocks and its WAL is checkpointed into it)."""
    added = sum(_size(after / name) - _size(before / name if before else None) for name in ARTIFACT_FOLDERS)
    if added > 0:
        return added
    return (_size(after) - _size(before)) // 4


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: int) -> Iterator[bool]:
    """Mount a tmpfs of ``size`` bytes on ``folder``; yields False (and mounts nothing) where that is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield False
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def fill(folder: Path, leave: int) -> Path:
    """A filler file in ``folder`` that leaves about ``leave`` bytes free on its file system."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with filler.open("wb") as handle:
        remaining = max(0, free - leave)
        block = b"\0" * (1 << 20)
        while remaining > 0:
            remaining -= handle.write(block[: min(len(block), remaining)])
    return filler


def _clear_failure(code: int, stderr: str) -> tuple[bool, str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    clear = code == 1 and "Traceback" not in stderr and last.startswith("failed: disk full")
    return clear, last


def _audit_after_failure(bench: Bench) -> tuple[str, str]:
    """``refinery audit`` right after the failure: (its problems, the complete artifact folders it left
    unregistered). A folder renamed into place whose registration then ran out of space is complete (the
    half-written check verified it) and the rerun registers it: that is the one problem allowed here."""
    report, code = bench.audit_report()
    if report is None:
        return f"audit exited {code} without a report", ""
    problems = report.get("problems", [])
    adopted = [p["artifact"] for p in problems if p["kind"] == "orphaned"]
    others = [f"{p['kind']} {p['artifact']}: {p['detail']}" for p in problems if p["kind"] != "orphaned"]
    return "; ".join(others)[:300], ", ".join(adopted)


def disk_full_trials(chain_bench: Bench, root: Path, plan: list[Step], rng: random.Random) -> Row:
    """One trial per step of ``plan``, on a tmpfs under ``root`` (or with the injected file-size limit)."""
    started = time.monotonic()
    row = Row("disk full mid-write", counts=("reached_reference", "audit_clean", "caught"))
    biggest = max(_size(chain_bench.saved(step.after)) for step in plan)
    with small_tmpfs(root / "disk", biggest + (16 << 20)) as mounted:
        bench = Bench(root / "disk" / "bench", env=chain_bench.env, server=chain_bench.server)
        row.details.append("a tmpfs workspace" if mounted else "injected fault: RLIMIT_FSIZE (tmpfs not allowed)")
        for step in plan:
            row.trials += 1
            failures = []
            bench.restore(step.after, source=chain_bench)
            reference = fingerprint(bench.ws)
            bench.restore(step.before, source=chain_bench)
            needed = _needed(chain_bench.saved(step.before) if step.before else None, chain_bench.saved(step.after))
            leave = rng.randint(0, max(needed // 2, 1))
            if mounted:
                filler = fill(bench.root.parent, leave)
                run = bench.run(*step.args)
                filler.unlink()
            else:  # no file may grow past ``leave`` bytes: the step's new files, the WAL, the catalog's growth
                run = bench.run(*step.args, env={FSIZE_ENV: str(leave)})
            clear, line = _clear_failure(run.code, run.stderr)
            if clear:
                row.caught += 1
            elif run.code != 0:
                failures.append(f"{step.name} with {leave} B free: exit {run.code}, {run.stderr[-400:]}")
            outcome = line[:160] if clear else "it fitted" if run.code == 0 else "unclear"
            row.details.append(f"{step.name} with {leave} of {needed} B free: {outcome}")
            failures += [f"{step.name} half-written: {p}" for p in half_written(bench.ws)]
            problems, adopted = _audit_after_failure(bench)
            if problems:
                failures.append(f"{step.name} audit after the failure: {problems}")
            if adopted:
                row.details.append(f"{step.name} left {adopted}, complete, for the rerun to register")
            rerun = bench.run(*step.args)
            found = fingerprint(bench.ws)
            if rerun.code == 0 and found == reference:
                row.reached_reference += 1
            else:
                failures.append(
                    f"{step.name} rerun exited {rerun.code} ({rerun.error_line()[:200]}): "
                    + "; ".join(differences(reference, found))
                )
            clean_after, problems = bench.audit()
            row.audit_clean += clean_after
            if not clean_after:
                failures.append(f"{step.name} audit after the rerun: {problems}")
            row.passed += not failures
            row.details += failures
        shutil.rmtree(bench.root, ignore_errors=True)
    row.seconds = time.monotonic() - started
    return row
