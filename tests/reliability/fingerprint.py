"""What a workspace holds, reduced to what a rerun must reproduce: the reference result of the kill trials.

Every catalog table is hashed row by row (sorted), and every file of every artifact folder (snapshots, adapters,
evals) is hashed, leaving out what legitimately differs between two identical runs: timestamps (TIMESTAMP
columns, ``created_at`` keys), durations, throughputs and memory use inside JSON, manifests (they hold the creation
time and the library versions; every file they list is compared on its own), plots, and how much of the work a
rerun found done (reused MinHash signatures, a training resumed from a checkpoint).
So two workspaces with equal fingerprints hold the same records, findings, snapshot members, adapter weights,
predictions and metrics.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb

#: JSON keys that hold a time, a duration, a throughput or memory use (they differ between two identical runs), or
#: how much of the work a rerun found done (signatures and embeddings reused from the killed run, a training resumed).
VOLATILE_KEYS = frozenset(
    {"created_at", "started_at", "finished_at", "examples_per_s", "seconds", "peak_rss_mb", "peak_gpu_mb",
     "resumed_from_step", "sketched", "signatures_reused", "embedded", "embeddings_cached"}
)  # fmt: skip
#: Files that plot throughput next to the loss (the loss itself is compared in curves.json).
VOLATILE_SUFFIXES = (".png",)
#: Columns that hash a file holding its creation time (the manifest): the files it lists are compared instead.
VOLATILE_COLUMNS = frozenset({"manifest_sha256"})
ARTIFACT_FOLDERS = ("snapshots", "adapters", "evals")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip(v)
            for k, v in value.items()
            if k not in VOLATILE_KEYS
            and not k.endswith("_seconds")
            and not k.endswith("_per_second")
            and not (k.startswith("peak_") and k.endswith("_mb"))  # memory use: peak_rss_mb, peak_private_mb
        }
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _json_or_text(text: str) -> str:
    try:
        return json.dumps(_strip(json.loads(text)), sort_keys=True)
    except ValueError:
        return text


def _cell(value: Any, json_column: bool, ws: str) -> str:
    if isinstance(value, bytes | bytearray):
        return hashlib.sha256(value).hexdigest()
    if isinstance(value, str):
        value = value.replace(ws, "<ws>")
        if json_column:
            return _json_or_text(value)
    return repr(value)


def catalog_state(catalog: Path) -> dict[str, str]:
    """table -> '<rows> rows <sha256 of its sorted rows>' for every table of the catalog file.

    The workspace's own path is replaced by ``<ws>`` wherever a value holds it, so two workspaces in different
    folders compare equal when they hold the same.
    """
    ws = str(catalog.parent)
    state: dict[str, str] = {}
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY 1"
            ).fetchall()
        ]
        for table in tables:
            columns = [
                name
                for name, kind in con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
                    "ORDER BY ordinal_position",
                    [table],
                ).fetchall()
                if not kind.startswith("TIMESTAMP") and name not in VOLATILE_COLUMNS
            ]
            quoted = ", ".join(f'"{c}"' for c in columns)
            rows = con.execute(f'SELECT {quoted} FROM "{table}"').fetchall()
            lines = sorted(
                "\t".join(_cell(v, c.endswith("_json"), ws) for c, v in zip(columns, row, strict=True)) for row in rows
            )
            digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]
            state[f"table {table}"] = f"{len(rows)} rows {digest}"
    finally:
        con.close()
    return state


def artifact_state(ws: Path) -> dict[str, str]:
    """'<folder>/<artifact>/<file>' -> sha256 (JSON files without their volatile keys), manifests left out."""
    state: dict[str, str] = {}
    for name in ARTIFACT_FOLDERS:
        folder = ws / name
        if not folder.is_dir():
            continue
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = file.relative_to(ws).as_posix()
            if file.name == "manifest.json" or file.suffix in VOLATILE_SUFFIXES:
                state[rel] = "present"
            elif file.suffix == ".json":
                text = file.read_text(encoding="utf-8").replace(str(ws), "<ws>")
                state[rel] = hashlib.sha256(_json_or_text(text).encode()).hexdigest()[:16]
            else:
                state[rel] = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return state


def fingerprint(ws: Path) -> dict[str, str]:
    """The catalog's tables and the artifact files of the workspace ``ws`` (empty if it has no catalog)."""
    catalog = ws / "catalog.duckdb"
    return {**(catalog_state(catalog) if catalog.is_file() else {}), **artifact_state(ws)}


def differences(reference: dict[str, str], found: dict[str, str], limit: int = 4) -> list[str]:
    """What ``found`` lacks, adds or holds differently from ``reference`` (at most ``limit`` lines)."""
    lines = []
    for key in sorted(set(reference) | set(found)):
        if key not in found:
            lines.append(f"{key} missing")
        elif key not in reference:
            lines.append(f"{key} extra")
        elif reference[key] != found[key]:
            lines.append(f"{key} differs ({reference[key]} vs {found[key]})")
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])
