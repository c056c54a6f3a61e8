"""Two writers at once: two real ``refinery scan`` processes on one workspace.

The first scan is held inside one of its catalog write transactions (a seeded choice among them), so it holds the
catalog's lock; then the second starts. The second must say, on stderr and within a few seconds, that it waits
for the lock. Then the first goes on; the second either completes after it or fails with one clear line. Either
way the workspace ends as one uninterrupted scan leaves it, and ``refinery audit`` is clean.

With ``past_timeout`` the first holds the lock longer than the second's 30 s lock timeout: the second must fail
with the lock error (exit 1, one line, no traceback).
"""

from __future__ import annotations

import random
import time

from tests.reliability.bench import Bench
from tests.reliability.fingerprint import differences, fingerprint
from tests.reliability.rows import Row
from tests.support.kill import HeldProcess

WAITING = "waiting for"  # the catalog lock, or another scan to finish
#: How soon after its start the second writer must say that it waits. It says so at its first failed try, but
#: starting Python and the CLI takes 1 s on an idle machine and 10 s on a 2-core machine under a load of 7.
NOTICE_WITHIN = 20.0
LOCK_TIMEOUT = 30.0


def _wait_for_notice(child: HeldProcess, within: float) -> float | None:
    """Seconds until ``child`` printed the waiting notice on stderr (None: not within ``within``)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if WAITING in child.stderr():
            return time.monotonic() - started
        if child.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def _one_clear_line(code: int, stderr: str) -> bool:
    return (
        code in (1, 2)
        and "Traceback" not in stderr
        and any(line.startswith(("failed:", "error:")) for line in stderr.splitlines())
    )


def writer_trials(
    bench: Bench, state: str, reference_state: str, commits: int, trials: int, past_timeout: bool, rng: random.Random
) -> Row:
    """``trials`` two-writer trials (plus one past the lock timeout) from the saved ``state``."""
    started = time.monotonic()
    row = Row("two writers: scan + scan", counts=("reached_reference", "audit_clean"))
    bench.restore(reference_state)
    reference = fingerprint(bench.ws)
    plans = [(f"commit:{rng.randint(1, commits)}", False) for _ in range(trials)]
    if past_timeout:
        plans.append((f"commit:{rng.randint(1, commits)}", True))
    outcomes = []
    for point, hold_past_timeout in plans:
        row.trials += 1
        failures = []
        bench.restore(state)
        with bench.spawn("scan", "--json", fault=point) as first:
            if first.wait_for_hold(timeout=120) is None:
                failures.append(f"{point}: the first scan never held the lock: {first.stderr()[-300:]}")
                row.details += failures
                continue
            with bench.spawn("scan", "--json") as second:
                notice = _wait_for_notice(second, NOTICE_WITHIN)
                if notice is None:
                    failures.append(f"{point}: no '{WAITING}' notice within {NOTICE_WITHIN:.0f}s")
                if hold_past_timeout:
                    second.wait(timeout=LOCK_TIMEOUT + 60)
                first.resume()
                first_code, _, first_err = first.finish(timeout=300)
                second_code, _, second_err = second.finish(timeout=300)
        if first_code != 0:
            failures.append(f"{point}: the first scan exited {first_code}: {first_err[-300:]}")
        if second_code == 0:
            outcome = "completed"
        elif _one_clear_line(second_code, second_err):
            outcome = "failed: " + second_err.strip().splitlines()[-1][:120]
        else:
            outcome = "unclear"
            failures.append(f"{point}: the second scan exited {second_code}: {second_err[-400:]}")
        if hold_past_timeout and second_code == 0:
            failures.append(f"{point}: the second scan completed although the lock was held past its timeout")
        outcomes.append(f"{point}{' past timeout' if hold_past_timeout else ''}: notice after "
                        f"{notice if notice is None else round(notice, 1)}s, second {outcome}")  # fmt: skip
        found = fingerprint(bench.ws)
        if found == reference:
            row.reached_reference += 1
        else:
            failures.append(f"{point}: " + "; ".join(differences(reference, found)))
        clean, problems = bench.audit()
        row.audit_clean += clean
        if not clean:
            failures.append(f"{point} audit: {problems}")
        row.passed += not failures
        row.details += failures
    row.details += outcomes
    row.seconds = time.monotonic() - started
    return row
