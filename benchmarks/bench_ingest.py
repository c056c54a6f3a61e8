"""Ingest: `refinery ingest` of an alpaca JSON Lines file through the CLI, beside DuckDB's own read_json of it.

    .venv/bin/python benchmarks/bench_ingest.py [--n 200000]
    .venv/bin/python benchmarks/bench_ingest.py --n 1000000 --data /tmp/families-1000000.jsonl   # written once, reused

The file holds the heavy-family corpus of B2f (``family_corpus.py``: Toolformer records in families of near-copies,
about 490 bytes a row) when ``../shared/data`` is there, otherwise synthetic rows of the same size. Each engine runs
as its own process into a fresh folder, timed with its own peak RSS:

* ``refinery ingest``: the CLI (``--format alpaca``) into a fresh workspace: parsing, validation and normalisation
  of every row, record ids, and the catalog's records and source rows;
* ``duckdb read_json`` (the floor): ``CREATE TABLE t AS SELECT * FROM read_json(...)`` into a fresh DuckDB file,
  the bare load a user could compare with (no validation, no normalisation, no ids).

Prints µs per row, rows per second and peak RSS of each, and how many times the floor's time ingest takes.
Writes bench-results/ingest-{N}.json; the last line is the final figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

from dedup_common import SHARED_DATA, machine, table, timed, write_result


def write_corpus(path: Path, n: int) -> str:
    """Write ``n`` alpaca rows to ``path``; return which corpus it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if SHARED_DATA.is_dir():
        from family_corpus import generate_families

        rows = generate_families(n).rows
        kind = "heavy families (family_corpus.py)"
    else:
        rng = random.Random(0)
        words = [f"w{i}" for i in range(5000)]
        rows = [
            {
                "instruction": " ".join(rng.choices(words, k=50)),
                "input": "",
                "output": " ".join(rng.choices(words, k=20)) + f" ref {i}",
            }
            for i in range(n)
        ]
        kind = "synthetic"
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return kind


def duckdb_worker(data: Path, database: Path) -> None:
    import duckdb

    con = duckdb.connect(str(database))
    con.execute("CREATE TABLE t AS SELECT * FROM read_json(?, format = 'newline_delimited')", [str(data)])
    rows = con.execute("SELECT count(*) FROM t").fetchone()
    con.close()
    print(json.dumps({"rows": rows[0] if rows else 0}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--data", type=Path, default=None, help="the JSONL file: reused when it exists, else written")
    parser.add_argument("--tmp", default=None, help="folder for the workspaces (default: the system's)")
    parser.add_argument("--duckdb-worker", nargs=2, metavar=("DATA", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.duckdb_worker:
        duckdb_worker(Path(args.duckdb_worker[0]), Path(args.duckdb_worker[1]))
        return
    env = {**os.environ, "REFINERY_PROGRESS": "0"}
    refinery = str(Path(sys.executable).with_name("refinery"))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=args.tmp) as tmp:
        folder = Path(tmp)
        data = args.data or folder / f"families-{args.n}.jsonl"
        corpus = "given file" if data.exists() else write_corpus(data, args.n)
        size_mb = data.stat().st_size / 1e6
        ingest = timed(
            [refinery, "-q", "-w", str(folder / "ws"), "ingest", str(data), "--format", "alpaca", "--json"], env, folder
        )
        summary = json.loads(ingest.pop("stdout"))
        floor = timed(
            [sys.executable, __file__, "--duckdb-worker", str(data), str(folder / "floor.duckdb")], env, folder
        )
        floor_rows = json.loads(floor.pop("stdout").strip().splitlines()[-1])["rows"]
    rows_read = int(summary["rows_read"])
    if rows_read != floor_rows:
        raise SystemExit(f"refinery read {rows_read} rows, duckdb {floor_rows}: not the same file?")
    results = {"refinery ingest": ingest, "duckdb read_json": floor}
    for result in results.values():
        result["us_per_row"] = result["seconds"] / rows_read * 1e6
        result["rows_per_second"] = rows_read / result["seconds"]
    ratio = ingest["seconds"] / floor["seconds"]
    print(f"ingest: {rows_read:,} alpaca rows ({size_mb:.0f} MB, {corpus}), load average {machine()['load_average']}")
    print(
        table(
            [
                {
                    "engine": name,
                    "seconds": round(r["seconds"], 2),
                    "us/row": round(r["us_per_row"], 1),
                    "rows/s": round(r["rows_per_second"]),
                    "peak RSS MB": round(r["peak_rss_mb"]),
                }
                for name, r in results.items()
            ]
        )
    )
    payload = {
        "n": rows_read,
        "file_mb": size_mb,
        "corpus": corpus,
        "results": results,
        "ingest_summary": {k: summary[k] for k in ("ingested", "quarantined", "new_records", "seconds")},
        "times_the_floor": ratio,
    }
    path = write_result(f"ingest-{rows_read}", payload)
    print(f"wrote {path}")
    print(
        f"ingest at {rows_read:,}: refinery {ingest['seconds']:.1f} s ({ingest['us_per_row']:.0f} µs/row, "
        f"{ingest['peak_rss_mb']:.0f} MB), duckdb read_json {floor['seconds']:.1f} s "
        f"({floor['peak_rss_mb']:.0f} MB): {ratio:.1f}x the floor"
    )


if __name__ == "__main__":
    main()
