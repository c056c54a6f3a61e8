"""kill -9 at seeded points of one command, then a rerun: it must reach the reference result with `audit` clean.

The reference run is the same command, uninterrupted, from the same saved state; it also counts the fault-point
events the command goes through (``tests.reliability.inject``). Each trial picks an event kind, then one of its
events, from a seeded RNG, restores the saved state, runs the command held at that event and SIGKILLs it there.
Then:

- nothing is half-written: every artifact folder under its final name verifies against its manifest;
- the rerun (uninterrupted) exits as the reference run did and leaves the same fingerprint
  (``tests.reliability.fingerprint``): same catalog rows, same artifact files;
- ``refinery audit`` is clean.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from schemas.manifest import ManifestError, load_manifest
from tests.reliability.bench import Bench, Run
from tests.reliability.fingerprint import ARTIFACT_FOLDERS, differences, fingerprint
from tests.reliability.rows import Row
from tests.support.kill import NeverHeld, kill_at_hold


@dataclass(frozen=True)
class Stage:
    """A command and the saved workspace states around it."""

    name: str
    args: tuple[str, ...]
    before: str | None  # the saved state it starts from (None: no workspace)
    after: str  # the name the reference result is saved under
    keep: tuple[str, ...] = ()  # workspace entries a restore leaves alone
    note: Callable[[Bench], str | None] | None = None  # what a rerun did, in a word (e.g. resumed from step 4)
    kinds: tuple[str, ...] | None = None  # the event kinds to kill at (None: every kind the command goes through)


def half_written(ws: Path) -> list[str]:
    """Artifact folders under their final name that do not verify against their manifest."""
    found = []
    for name in ARTIFACT_FOLDERS:
        folder = ws / name
        for artifact in sorted(folder.iterdir()) if folder.is_dir() else []:
            if artifact.name.startswith("."):
                continue  # a staging folder: never read, removed by the next run
            try:
                load_manifest(artifact)
            except ManifestError as exc:
                found.append(str(exc)[:160])
    return found


def kill_points(counts: dict[str, int], rng: random.Random, n: int, among: tuple[str, ...] | None = None) -> list[str]:
    """``n`` events ``KIND:K``: a kind drawn uniformly among those that occur (and are ``among``), then one of its
    events."""
    kinds = sorted(k for k, c in counts.items() if c > 0 and (among is None or k in among))
    points = []
    for _ in range(n):
        kind = rng.choice(kinds)
        points.append(f"{kind}:{rng.randint(1, counts[kind])}")
    return points


def run_reference(bench: Bench, stage: Stage) -> tuple[Run, dict[str, str]]:
    """The stage run uninterrupted from its saved state; saved as ``stage.after``."""
    bench.restore(stage.before, stage.keep)
    run = bench.run(*stage.args, "--json")
    try:
        failed = run.code not in (0, 1) or "error" in run.json  # exit 1 with a report: a failed gate verdict
    except ValueError:
        failed = True
    if failed:
        raise RuntimeError(f"the reference run of {stage.name} failed ({run.code}): {run.stderr[-1500:]}")
    bench.save(stage.after)
    return run, fingerprint(bench.ws)


def kill_trials(bench: Bench, stage: Stage, trials: int, rng: random.Random) -> tuple[Row, Run]:
    """The stage's reference run, then ``trials`` kill-and-rerun trials; the row and the reference run."""
    started = time.monotonic()
    row = Row(f"kill -9: {stage.name}", counts=("reached_reference", "audit_clean"))
    reference_run, reference = run_reference(bench, stage)
    points = kill_points(reference_run.counts, rng, trials, stage.kinds)
    row.details.append("killed at " + ", ".join(points))
    notes: list[str] = []
    for point in points:
        row.trials += 1
        bench.restore(stage.before, stage.keep)
        failures = []
        with bench.spawn(*stage.args, "--json", fault=point) as child:
            try:
                kill_at_hold(child)
            except NeverHeld as exc:
                failures.append(f"{point} never reached: {str(exc)[:200]}")
        failures += [f"{point} half-written: {problem}" for problem in half_written(bench.ws)]
        rerun = bench.run(*stage.args, "--json")
        found = fingerprint(bench.ws)
        if rerun.code == reference_run.code and found == reference:
            row.reached_reference += 1
        else:
            failures.append(
                f"{point} rerun exited {rerun.code} ({rerun.error_line()[:200]}): "
                + "; ".join(differences(reference, found))
            )
        clean, problems = bench.audit()
        if clean:
            row.audit_clean += 1
        else:
            failures.append(f"{point} audit: {problems}")
        if stage.note is not None and (note := stage.note(bench)):
            notes.append(note)
        row.passed += not failures
        row.details += failures
    if notes:
        row.details.append("reruns: " + ", ".join(notes))
    bench.restore(stage.after, stage.keep)  # the next stage starts from the reference result
    row.seconds = time.monotonic() - started
    return row, reference_run
