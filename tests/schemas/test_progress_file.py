"""REFINERY_PROGRESS_FILE: a watcher (the jobs of `refinery serve`) reads the current bar's state as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.progress import progress


def _state(path: Path) -> dict[str, object]:
    found: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return found


def test_the_file_holds_each_bar_state_and_its_end_even_with_bars_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "progress.json"
    monkeypatch.setenv("REFINERY_PROGRESS", "0")  # no bars shown: the file is kept all the same
    monkeypatch.setenv("REFINERY_PROGRESS_FILE", str(sink))
    with progress("ingest train", total=3, unit="bytes") as bar:
        assert _state(sink) | {"updated_at": None} == {
            "description": "ingest train", "done": 0.0, "total": 3, "unit": "bytes", "final": False, "updated_at": None,
        }  # fmt: skip
        bar.advance(2)
        bar.set_description("ingest train (2 files)")
        bar.advance()
    end = _state(sink)
    assert end["done"] == 3.0 and end["final"] is True and end["description"] == "ingest train (2 files)"
    with progress("scan", total=None) as bar:
        bar.set_total(5)
        bar.advance(5)
    assert {k: _state(sink)[k] for k in ("description", "done", "total", "final")} == {
        "description": "scan", "done": 5.0, "total": 5, "final": True,
    }  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]  # no temporary file left


def test_an_unwritable_file_never_fails_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFINERY_PROGRESS_FILE", str(tmp_path / "missing-folder" / "progress.json"))
    with progress("scan", total=2) as bar:
        bar.advance(2)
    assert not (tmp_path / "missing-folder").exists()
