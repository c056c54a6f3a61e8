"""Shared helpers of the dedup benchmarks (B1-B3): data loading, baselines' shingling and union-find, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench-results"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("REFINERY_PROGRESS", "0")


def require_data() -> Path:
    if not SHARED_DATA.is_dir():
        print(
            f"error: {SHARED_DATA} not found: this benchmark needs ../shared/data beside the checkout", file=sys.stderr
        )
        raise SystemExit(2)
    return SHARED_DATA


def toolformer(name: str = "toolformer-dedupe-only.json") -> list[dict[str, str]]:
    path = require_data() / "gpteacher_toolformer" / name
    return json.loads(path.read_text(encoding="utf-8"))


def alpaca_text(row: dict[str, str]) -> str:
    prompt = row["instruction"] + ("\n\n" + row["input"] if row.get("input") else "")
    return prompt + "\n" + row["output"]


def banking77() -> list[tuple[str, str]]:
    import csv

    with (require_data() / "banking77" / "train.csv").open(encoding="utf-8") as handle:
        return [(r["text"], r["category"]) for r in csv.DictReader(handle)]


def python_shingles(text: str, n: int = 5) -> list[str]:
    """The plain Python word 5-gram shingling a user feeds datasketch or rensa with."""
    words = text.lower().split()
    if len(words) < n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def union_lsh_matches(sketches: Sequence[Any], lsh: Any) -> tuple[Callable[[int], int], int]:
    """The datasketch baseline's clustering: union-find over every record's ``lsh.query`` matches (no verification).

    Returns ``find`` (record index -> the smallest index of its cluster) and the number of query matches (pairs
    counted from both sides, a record's match with itself excluded).
    """
    parent = list(range(len(sketches)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = 0
    for i, m in enumerate(sketches):
        for j in lsh.query(m):
            if j != i:
                pairs += 1
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    return find, pairs


def timed(cmd: list[str], env: dict[str, str], folder: Path) -> dict[str, Any]:
    """Seconds, peak RSS and stdout of one child process (its own rusage, not that of every child); its output goes
    to ``folder``, and a failure ends the benchmark with the tail of its stderr."""
    out_path, err_path = folder / "stdout.txt", folder / "stderr.txt"
    started = time.perf_counter()
    with out_path.open("w") as out, err_path.open("w") as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err_path.read_text()[-4000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out_path.read_text()}


def machine() -> dict[str, Any]:
    return {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **payload, "machine": machine()}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(_fmt(r[k]).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
