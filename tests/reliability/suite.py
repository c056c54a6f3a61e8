"""The reliability suite: ``python -m tests.reliability.suite [--full] [--seed N] [--only NAME ...]``.

Scenarios (docs/RELIABILITY.md has the table of a full run):

- kill -9 at seeded points of ingest, scan, snapshot, train (resumed from its checkpoints), eval and review pull
  (``kill_trials``): every rerun reaches the reference result and ``refinery audit`` is clean;
- tampered snapshot, adapter and eval files (``tamper``): ``refinery audit`` names every change;
- a disk that fills up mid-write (``disk_full``): one clear error line, nothing corrupted, and the rerun succeeds
  once space is freed;
- two writers on one workspace (``writers``): the second says that it waits for the catalog lock, then completes
  or fails clearly.

Without ``--full`` a short subset runs (what ``tests/reliability/test_reliability.py`` runs in CI; review pull,
which needs a real Argilla server, is a test of its own there, marked slow). The same seed gives the same kill
points, tampering and fault sizes.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.reliability.bench import Bench, cpu_env
from tests.reliability.chain import SMALL_CHUNKS, Chain
from tests.reliability.disk_full import disk_full_trials
from tests.reliability.disk_full import steps as disk_steps
from tests.reliability.forkserver import ForkServer
from tests.reliability.inject import SET_ENV
from tests.reliability.rows import Row, details, table
from tests.reliability.tamper import tamper_trials
from tests.reliability.writers import writer_trials
from tests.support.kill import ROOT


@dataclass(frozen=True)
class Plan:
    """How many trials each scenario gets (every tampering always runs: they are cheap)."""

    kills: dict[str, int]  # per chain stage
    review_pull: int
    disk_full: int
    writers: int  # two-writer trials where the first writer lets go
    writers_timeout: bool  # plus one where it holds the lock past the second's 30 s timeout


QUICK = Plan(
    kills={"ingest": 1, "scan": 2, "snapshot": 1, "train": 1, "eval": 1},
    review_pull=0,
    disk_full=2,
    writers=1,
    writers_timeout=False,
)
FULL = Plan(
    kills={"ingest": 5, "scan": 6, "snapshot": 5, "train": 5, "eval": 4},
    review_pull=4,
    disk_full=6,
    writers=3,
    writers_timeout=True,
)
SCENARIOS = ("kill", "review", "tamper", "disk", "writers")


def build_model(folder: Path) -> Path:
    """The tiny chat model (tests/support/tiny_model.py), built once per suite run, in a child process: this one
    never imports torch."""
    import subprocess

    script = (
        "import sys; from pathlib import Path; from tests.support.tiny_model import build_tiny_model; "
        "build_tiny_model(Path(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", script, str(folder)], cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    return folder


def run_suite(
    root: Path,
    plan: Plan,
    seed: int = 0,
    only: tuple[str, ...] = SCENARIOS,
    log: Callable[[Row], None] = lambda row: None,
    model: Path | None = None,
    fork: bool = True,
) -> list[Row]:
    """Every scenario of ``plan`` named in ``only``, in the scratch folder ``root``; one row per scenario.

    ``model``: the tiny model's folder, when the caller has built it already. ``fork``: commands are forked by a
    warm server (``tests.reliability.forkserver``); False: each is a new Python process (slower).
    """
    os.environ["REFINERY_PROGRESS"] = "0"
    env = {**cpu_env(), SET_ENV: SMALL_CHUNKS}
    model = model or build_model(root / "tiny-model")
    server = ForkServer(env) if fork else None
    try:
        return _scenarios(Bench(root / "chain", env=env, server=server), model, plan, seed, only, log)
    finally:
        if server is not None:
            server.close()


def _scenarios(
    bench: Bench, model: Path, plan: Plan, seed: int, only: tuple[str, ...], log: Callable[[Row], None]
) -> list[Row]:
    chain = Chain(bench, model)
    rows = chain.walk(lambda stage: plan.kills.get(stage, 0) if "kill" in only else 0, seed, log)

    def add(row: Row) -> None:
        log(row)
        rows.append(row)

    if "review" in only and plan.review_pull:
        from tests.reliability.review_pull import review_pull_trials

        add(review_pull_trials(bench, "scanned", plan.review_pull, random.Random(f"{seed}/review")))
    if "tamper" in only:
        add(tamper_trials(bench, "evaluated", None, random.Random(f"{seed}/tamper")))
    if "disk" in only and plan.disk_full:
        steps = disk_steps(chain.stage("train").args)[: plan.disk_full]
        add(disk_full_trials(bench, bench.root.parent, steps, random.Random(f"{seed}/disk")))
    if "writers" in only and (plan.writers or plan.writers_timeout):
        commits = chain.references["scan"].counts.get("commit", 1)
        add(writer_trials(bench, "ingested", "scanned", commits, plan.writers, plan.writers_timeout,
                          random.Random(f"{seed}/writers")))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the full suite (about 4 min on 2 cores)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the kill points, tampering and fault sizes")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS), help="scenarios to run")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--no-fork", action="store_true", help="start each command as a new Python process")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def log(row: Row) -> None:
        print(f"{'pass' if row.ok else 'FAIL'}  {row.scenario}: {row.passed}/{row.trials} in {row.seconds:.0f}s",
              file=sys.stderr, flush=True)  # fmt: skip

    plan = FULL if args.full else QUICK
    if args.keep is not None:
        rows = run_suite(args.keep, plan, args.seed, tuple(args.only), log, fork=not args.no_fork)
    else:
        with tempfile.TemporaryDirectory(prefix="refinery-reliability-") as scratch:
            rows = run_suite(Path(scratch), plan, args.seed, tuple(args.only), log, fork=not args.no_fork)
    print(table(rows))
    print()
    print(details(rows))
    print(f"\n{'full' if args.full else 'quick'} suite, seed {args.seed}: {time.monotonic() - started:.0f}s")
    return 0 if rows and all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
