from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from schemas.atomic import atomic_directory, clean_staging, write_text_atomic
from schemas.manifest import ManifestError, load_manifest, new_manifest, write_manifest


def _artifact(folder: Path) -> Path:
    with atomic_directory(folder) as staging:
        (staging / "data.txt").write_text("hello")
        (staging / "sub").mkdir()
        (staging / "sub" / "more.bin").write_bytes(b"\x00\x01")
        write_manifest(staging, new_manifest("snapshot", "snap_x", parents=["scan_y"], config={"a": 1}))
    return folder


def test_manifest_round_trip_records_hashes_versions_and_hardware(tmp_path: Path) -> None:
    folder = _artifact(tmp_path / "art")
    manifest = load_manifest(folder)
    assert set(manifest.files) == {"data.txt", "sub/more.bin"}
    assert manifest.parents == ["scan_y"] and manifest.config == {"a": 1}
    assert "duckdb" in manifest.versions and manifest.hardware["cpu_count"]


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda f: (f / "data.txt").write_text("HELLO"), "data.txt was modified"),
        (lambda f: (f / "sub" / "more.bin").unlink(), "sub/more.bin is missing"),
        (lambda f: (f / "extra.txt").write_text("x"), "extra.txt is not listed"),
        (lambda f: (f / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda f: (f / "manifest.json").write_text("{not json"), "unreadable manifest"),
    ],
)
def test_tampering_is_detected(tmp_path: Path, tamper: object, message: str) -> None:
    folder = _artifact(tmp_path / "art")
    tamper(folder)  # type: ignore[operator]
    with pytest.raises(ManifestError, match=message):
        load_manifest(folder)


def test_atomic_directory_leaves_nothing_on_error_and_refuses_overwrite(tmp_path: Path) -> None:
    final = tmp_path / "art"
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(final) as staging:
        (staging / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    _artifact(final)
    with pytest.raises(FileExistsError, match="already exists; artifacts are immutable"), atomic_directory(final):
        pass


def test_killed_writer_leaves_no_final_folder_and_staging_is_cleaned(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        from schemas.atomic import atomic_directory
        with atomic_directory(Path({str(tmp_path / "art")!r})) as staging:
            (staging / "part.txt").write_text("x")
            print("ready", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "art").exists()
    assert len(clean_staging(tmp_path)) == 1
    assert list(tmp_path.iterdir()) == []


def test_write_text_atomic_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "x" / "f.txt"
    write_text_atomic(path, "one")
    write_text_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_two_writers_of_one_artifact_folder_the_second_gets_file_exists_and_leaves_nothing(tmp_path: Path) -> None:
    """Two processes converting the same base model at once (two trainings started together in a new workspace):
    the one that renames second gets FileExistsError, which callers treat as "someone finished it first"."""
    final = tmp_path / "models" / "base"
    with pytest.raises(FileExistsError, match="already exists"), atomic_directory(final) as slow:
        (slow / "weights.bin").write_bytes(b"slow")
        with atomic_directory(final) as fast:  # the other writer starts after and renames first
            (fast / "weights.bin").write_bytes(b"fast")
    assert (final / "weights.bin").read_bytes() == b"fast"
    assert sorted(p.name for p in final.parent.iterdir()) == ["base"]  # the loser's staging folder is gone
