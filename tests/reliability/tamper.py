"""Tampered artifacts: each change to a snapshot, adapter or eval folder must be caught.

Each tampering starts from the evaluated workspace (one snapshot, one adapter, one eval), changes it one way (a
flipped byte, a truncated, deleted or swapped file, an edited manifest, a moved folder) and runs
``refinery audit``: caught means it exits 1 and names that artifact. Where the seeded RNG has a say (which byte,
which length), the same seed makes the same change.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.reliability.bench import Bench
from tests.reliability.rows import Row


@dataclass(frozen=True)
class Artifacts:
    snapshot: Path
    adapter: Path
    eval: Path

    @classmethod
    def of(cls, ws: Path) -> Artifacts:
        def one(folder: str) -> Path:
            found = [p for p in (ws / folder).iterdir() if not p.name.startswith(".")]
            if len(found) != 1:
                raise RuntimeError(f"expected one artifact under {ws / folder}, found {len(found)}")
            return found[0]

        return cls(one("snapshots"), one("adapters"), one("evals"))


def flip_byte(file: Path, rng: random.Random) -> str:
    data = bytearray(file.read_bytes())
    at = rng.randrange(len(data))
    data[at] ^= 0xFF
    file.write_bytes(bytes(data))
    return f"byte {at} of {len(data)} flipped"


def truncate(file: Path, rng: random.Random) -> str:
    size = file.stat().st_size
    keep = rng.randrange(size)
    with file.open("r+b") as handle:
        handle.truncate(keep)
    return f"cut to {keep} of {size} bytes"


def swap(a: Path, b: Path) -> str:
    spare = a.with_name(a.name + ".swap")
    a.rename(spare)
    b.rename(a)
    spare.rename(b)
    return f"swapped with {b.name}"


def edit_json(file: Path, change: Callable[[dict], None]) -> str:
    data = json.loads(file.read_text(encoding="utf-8"))
    change(data)
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return "edited"


def zero_weights(file: Path) -> str:
    """Replace the adapter weights with a valid safetensors file of the same tensors, all zero."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(file))
    save_file({k: v * 0 for k, v in tensors.items()}, str(file))
    return "valid weights of the same shapes (zeros) swapped in"


def _set(path: list[str], value: object) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        for key in path[:-1]:
            data = data.setdefault(key, {})
        data[path[-1]] = value

    return change


def delete(path: Path) -> str:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    return "deleted"


def add_file(path: Path) -> str:
    path.write_bytes(b"PAR1")
    return "added"


def move(folder: Path, to: Path) -> str:
    folder.rename(to)
    return f"moved to {to.name}"


def replace_with(path: Path, other: Path) -> str:
    shutil.copyfile(other, path)
    return f"replaced by a copy of {other.name}"


def tamperings(a: Artifacts, rng: random.Random) -> list[tuple[str, Path, Callable[[], str]]]:
    """(name, the artifact folder it damages, the change) for every tampering, in a fixed order."""
    s, d, e = a.snapshot, a.adapter, a.eval
    weights = d / "adapter" / "adapter_model.safetensors"
    return [
        ("snapshot: byte flip in train.parquet", s, lambda: flip_byte(s / "train.parquet", rng)),
        ("snapshot: test.parquet truncated", s, lambda: truncate(s / "test.parquet", rng)),
        ("snapshot: validation.parquet deleted", s, lambda: delete(s / "validation.parquet")),
        ("snapshot: train and test swapped", s, lambda: swap(s / "train.parquet", s / "test.parquet")),
        ("snapshot: manifest counts edited", s, lambda: edit_json(s / "manifest.json", _set(["counts", "train"], 1))),
        ("snapshot: a file and its manifest hash both changed", s, lambda: _rehash(s, "train.parquet", rng)),
        ("snapshot: manifest deleted", s, lambda: delete(s / "manifest.json")),
        ("snapshot: manifest truncated", s, lambda: truncate(s / "manifest.json", rng)),
        ("snapshot: a file added", s, lambda: add_file(s / "extra.parquet")),
        ("snapshot: folder deleted", s, lambda: delete(s)),
        ("adapter: byte flip in the weights", d, lambda: flip_byte(weights, rng)),
        ("adapter: weights truncated", d, lambda: truncate(weights, rng)),
        ("adapter: weights swapped for valid zeros", d, lambda: zero_weights(weights)),
        ("adapter: adapter_config.json deleted", d, lambda: delete(d / "adapter" / "adapter_config.json")),
        ("adapter: curves.json edited", d,
         lambda: edit_json(d / "adapter" / "curves.json", _set(["summary", "best_step"], 1))),
        ("adapter: manifest val_loss edited", d,
         lambda: edit_json(d / "manifest.json", _set(["extra", "metrics", "val_loss"], 0.001))),
        ("adapter: manifest names another id", d, lambda: edit_json(d / "manifest.json", _set(["id"], "adp_0"))),
        ("adapter: folder moved away", d, lambda: move(d, d.with_name("moved"))),
        ("eval: byte flip in predictions.parquet", e, lambda: flip_byte(e / "predictions.parquet", rng)),
        ("eval: report.json verdict edited to pass", e,
         lambda: edit_json(e / "report.json", _set(["verdict"], "pass"))),
        ("eval: report.json truncated", e, lambda: truncate(e / "report.json", rng)),
        ("eval: predictions.parquet deleted", e, lambda: delete(e / "predictions.parquet")),
        ("eval: predictions swapped for the snapshot's test split", e,
         lambda: replace_with(e / "predictions.parquet", s / "test.parquet")),
        ("eval: manifest verdict edited to pass", e,
         lambda: edit_json(e / "manifest.json", _set(["extra", "verdict"], "pass"))),
        ("eval: report verdict and its manifest hash both edited", e,
         lambda: _rehash(e, "report.json", rng, _set(["verdict"], "pass"))),
        ("eval: manifest deleted", e, lambda: delete(e / "manifest.json")),
    ]  # fmt: skip


def _rehash(folder: Path, name: str, rng: random.Random, change: Callable[[dict], None] | None = None) -> str:
    """Change ``name`` (flip a byte, or edit it as JSON) and write its new hash into the manifest: the files agree
    with the manifest, only the catalog's record of the manifest (or of the artifact) can tell."""
    from schemas.ids import sha256_file

    if change is None:
        flip_byte(folder / name, rng)
    else:
        edit_json(folder / name, change)
    return edit_json(folder / "manifest.json", _set(["files", name], sha256_file(folder / name)))


def tamper_trials(bench: Bench, state: str, limit: int | None, rng: random.Random) -> Row:
    """Every tampering (or ``limit`` of them, drawn by ``rng``) from the saved ``state``; caught by audit?"""
    started = time.monotonic()
    row = Row("tampering: snapshot, adapter, eval files", counts=("caught",))
    bench.restore(state)
    names = [name for name, _, _ in tamperings(Artifacts.of(bench.ws), rng)]
    chosen = set(names if limit is None or limit >= len(names) else rng.sample(names, limit))
    missed = []
    for index, name in enumerate(names):
        if name not in chosen:
            continue
        bench.restore(state)
        artifacts = Artifacts.of(bench.ws)
        _, folder, change = tamperings(artifacts, rng)[index]
        change()
        caught, detail = _caught(bench, folder.name)
        row.trials += 1
        row.passed += caught
        row.caught += caught
        if not caught:
            missed.append(f"{name} not caught ({detail})")
    row.details += missed or [f"{row.trials} tamperings, each named by refinery audit"]
    bench.restore(state)
    row.seconds = time.monotonic() - started
    return row


def _caught(bench: Bench, artifact_id: str) -> tuple[bool, str]:
    report, code = bench.audit_report()
    if report is None:
        return False, f"audit exited {code} without a report"
    named = [p for p in report.get("problems", []) if artifact_id in p["artifact"] or artifact_id in (p["path"] or "")]
    if code == 1 and named:
        return True, named[0]["detail"]
    return False, f"audit exited {code}, problems: {report.get('problems')}"
