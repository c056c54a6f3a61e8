"""`refinery backup` and `refinery restore`: a workspace as one verified ``.tar.gz``, and back into a new folder.

The archive holds, under their paths relative to the workspace root:

- ``catalog.duckdb`` (and its write-ahead log, if one was left), copied while a read-only connection holds
  DuckDB's file lock, so no other process can write to it during the copy;
- every artifact folder the copied catalog names that lies inside the workspace: snapshots, adapters, eval runs
  and base models under ``models/``. They are immutable, so copying them after the lock is released is safe;
- last, :data:`BACKUP_MANIFEST`: the format, the time, the source folder, the catalog's schema version, and the
  size and sha256 of every other member.

Not in it: caches (``embeddings/``, ``models/hashes/``), ``checkpoints/``, ``exports/``, ``reports/``, review
server state, artifact folders no catalog row names, and files outside the workspace (ingest's source files and
base model folders elsewhere: the catalog keeps their absolute paths). The archive is written to a temporary file
beside ARCHIVE and renamed when complete.

Restore refuses a DEST that is not empty. It reads the archive member by member into a staging folder beside
DEST, refusing any member that is not a plain file or folder, whose path is absolute or holds ``..``, or that
appears twice; then it checks every file against the manifest (sha256 and size, nothing missing, nothing extra)
and only then renames the staging folder to DEST. On any failure the staging folder is removed: DEST is never
half-written. Catalog paths are relative to the workspace root (schemas/artifact_paths.py), so the restored
workspace audits clean wherever it is.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from refinery.errors import UsageError
from refinery.workspace import Workspace
from schemas.artifact_paths import is_inside, resolve_stored, to_stored
from schemas.catalog import CATALOG_NAME, migrations
from schemas.errors import Failure
from schemas.manifest import library_versions, utc_now
from schemas.progress import progress

BACKUP_MANIFEST = "refinery-backup.json"
BACKUP_FORMAT = "refinery-backup"
BACKUP_VERSION = 1
#: DuckDB's write-ahead log beside the catalog (left behind only when a process died before a checkpoint).
WAL_SUFFIX = ".wal"
#: Catalog tables whose ``path`` names an artifact folder, by the kind the backup reports.
ARTIFACT_TABLES = {"snapshots": "snapshots", "adapters": "adapters", "evals": "eval_runs", "base_models": "base_models"}
_CHUNK = 1 << 20
_MAX_MANIFEST_BYTES = 256 << 20


class BackupError(Failure):
    """The backup cannot be made (an artifact folder is missing), or the archive is damaged, altered or unsafe."""


@dataclass(frozen=True)
class BackupResult:
    archive: Path
    files: int
    bytes: int
    artifacts: dict[str, int]
    schema_version: int
    outside: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "archive": str(self.archive),
            "files": self.files,
            "bytes": self.bytes,
            **self.artifacts,
            "schema_version": self.schema_version,
            "outside_workspace": self.outside,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class RestoreResult:
    workspace: Path
    archive: Path
    files: int
    bytes: int
    created_at: str
    source: str
    schema_version: int

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace": str(self.workspace),
            "archive": str(self.archive),
            "files": self.files,
            "bytes": self.bytes,
            "backup_created_at": self.created_at,
            "backup_source": self.source,
            "schema_version": self.schema_version,
        }


# ---------------------------------------------------------------------------------------------- backup


def backup(ws: Workspace, archive: Path) -> BackupResult:
    """Write the workspace's catalog and artifacts to ``archive`` (a new ``.tar.gz``), atomically."""
    started = time.monotonic()
    archive = Path(os.path.abspath(archive.expanduser()))
    if archive.exists():
        raise UsageError(f"{archive} already exists: a backup never replaces a file, choose a new name")
    if not ws.catalog.path.is_file():
        raise UsageError(f"no catalog at {ws.catalog.path}: nothing to back up")
    if not archive.parent.is_dir():
        raise UsageError(f"folder {archive.parent} does not exist")
    with tempfile.TemporaryDirectory(prefix=".refinery-backup-", dir=archive.parent) as scratch:
        catalog_files, folders, schema_version = _copy_catalog(ws, Path(scratch))
        members = catalog_files + _artifact_files(ws, folders)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".tmp", dir=archive.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                files = _write_archive(handle, members, ws, schema_version)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o666 & ~_umask())
            os.replace(tmp_name, archive)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
    counts = {kind: len(found) for kind, (found, _) in folders.items()}
    outside = sorted({p for _, (_, elsewhere) in folders.items() for p in elsewhere})
    return BackupResult(
        archive, len(files), sum(e["bytes"] for e in files.values()), counts, schema_version, outside,
        time.monotonic() - started,
    )  # fmt: skip


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: (folders inside the workspace, stored paths of folders outside it) per artifact kind.
_Folders = dict[str, tuple[list[Path], list[str]]]


def _copy_catalog(ws: Workspace, scratch: Path) -> tuple[list[tuple[str, Path]], _Folders, int]:
    """Copy the catalog (and its WAL) into ``scratch`` while a read-only connection holds DuckDB's lock, and read
    from that same state which artifact folders it names."""
    folders: _Folders = {}
    copied: list[tuple[str, Path]] = []
    with ws.catalog.read() as con:  # a read-only connection: no other process can write until it closes
        for kind, table in ARTIFACT_TABLES.items():
            inside: list[Path] = []
            elsewhere: list[str] = []
            for (stored,) in con.execute(f"SELECT path FROM {table} ORDER BY path").fetchall():
                folder = resolve_stored(stored, ws.root)
                if is_inside(folder, ws.root):
                    inside.append(folder)
                else:
                    elsewhere.append(str(folder))
            folders[kind] = (inside, elsewhere)
        version_row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        schema_version = int(version_row[0]) if version_row else 0
        for source in (ws.catalog.path, ws.catalog.path.with_name(ws.catalog.path.name + WAL_SUFFIX)):
            if source.is_file():
                target = scratch / source.name
                shutil.copyfile(source, target)
                copied.append((source.name, target))
    missing = [str(f) for found, _ in folders.values() for f in found if not f.is_dir()]
    if missing:
        raise BackupError(
            f"{len(missing)} artifact folder(s) named in the catalog are missing ({', '.join(missing[:3])}): "
            "run `refinery audit`"
        )
    return copied, folders, schema_version


def _artifact_files(ws: Workspace, folders: _Folders) -> list[tuple[str, Path]]:
    """(archive name, file) of every file in the artifact folders, sorted; links are followed."""
    found: dict[str, Path] = {}
    for inside, _ in folders.values():
        for folder in inside:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    found.setdefault(to_stored(file, ws.root), file)
    return sorted(found.items())


class _HashingReader:
    """Reads a file for tarfile while hashing what it hands over."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.handle.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data


def _write_archive(
    handle: IO[bytes], members: list[tuple[str, Path]], ws: Workspace, schema_version: int
) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    with (
        progress("backup: files", total=len(members)) as bar,
        tarfile.open(fileobj=handle, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, path in members:
            stat = path.stat()
            info = _file_info(name, stat.st_size, stat.st_mtime)
            with path.open("rb") as source:
                reader = _HashingReader(source)
                tar.addfile(info, reader)
            if reader.size != stat.st_size:
                raise BackupError(f"{path} changed while it was being archived")
            files[name] = {"sha256": reader.digest.hexdigest(), "bytes": reader.size}
            bar.advance()
        manifest = {
            "format": BACKUP_FORMAT,
            "version": BACKUP_VERSION,
            "created_at": utc_now(),
            "source": str(ws.root),
            "catalog": CATALOG_NAME,
            "schema_version": schema_version,
            "versions": library_versions(),
            "files": files,
        }
        data = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
        tar.addfile(_file_info(BACKUP_MANIFEST, len(data), time.time()), io.BytesIO(data))
    return files


def _file_info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o644
    return info


# ---------------------------------------------------------------------------------------------- restore


def restore(archive: Path, dest: Path) -> RestoreResult:
    """Verify ``archive`` and unpack it into ``dest`` (new or empty); ``dest`` appears complete or not at all."""
    archive = Path(os.path.abspath(archive.expanduser()))
    dest = Path(os.path.abspath(dest.expanduser()))
    if not archive.is_file():
        raise UsageError(f"no archive at {archive}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} exists and is not an empty folder: restore into a new or empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _staging(dest) as staging:
        found, manifest = _extract(archive, staging)
        _verify(archive, found, manifest)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.chmod(staging, 0o777 & ~_umask())
        os.rename(staging, dest)
    return RestoreResult(
        dest, archive, len(found), sum(size for _, size in found.values()), str(manifest.get("created_at")),
        str(manifest.get("source")), int(manifest.get("schema_version", 0)),
    )  # fmt: skip


@contextlib.contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.restore-", dir=dest.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The path parts of a member name, refused when absolute or climbing out with ``..``."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or PurePosixPath(name).is_absolute():
        raise BackupError(f"{archive.name}: refused member {name!r}: absolute path")
    parts = tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p != ".")
    if ".." in parts:
        raise BackupError(f"{archive.name}: refused member {name!r}: path with '..'")
    if not parts:
        raise BackupError(f"{archive.name}: refused member {name!r}: empty path")
    return parts


def _extract(archive: Path, staging: Path) -> tuple[dict[str, tuple[str, int]], dict[str, Any]]:
    """Every file member written under ``staging`` with its (sha256, size); the backup manifest, parsed."""
    found: dict[str, tuple[str, int]] = {}
    manifest_data: bytes | None = None
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                parts = _member_parts(archive, member.name)
                name = "/".join(parts)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BackupError(f"{archive.name}: refused member {member.name!r}: not a plain file or folder")
                if name in found or (name == BACKUP_MANIFEST and manifest_data is not None):
                    raise BackupError(f"{archive.name}: member {name!r} appears twice")
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has a reader
                if name == BACKUP_MANIFEST:
                    manifest_data = source.read(_MAX_MANIFEST_BYTES + 1)
                    if len(manifest_data) > _MAX_MANIFEST_BYTES:
                        raise BackupError(f"{archive.name}: {BACKUP_MANIFEST} is too large to be a backup manifest")
                    continue
                target = staging.joinpath(*parts)
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    found[name] = _copy_hashed(source, target)
                except (FileExistsError, NotADirectoryError, IsADirectoryError):
                    raise BackupError(f"{archive.name}: member {name!r} collides with another member") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BackupError(f"{archive.name} is damaged or not a .tar.gz archive: {exc}") from None
    if manifest_data is None:
        raise BackupError(f"{archive.name} holds no {BACKUP_MANIFEST}: not written by `refinery backup`, or cut short")
    try:
        manifest = json.loads(manifest_data)
    except ValueError as exc:
        raise BackupError(f"{archive.name}: {BACKUP_MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BACKUP_FORMAT:
        raise BackupError(f"{archive.name}: {BACKUP_MANIFEST} is not a Refinery backup manifest")
    return found, manifest


def _copy_hashed(source: IO[bytes], target: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with target.open("xb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def _verify(archive: Path, found: dict[str, tuple[str, int]], manifest: dict[str, Any]) -> None:
    """Every member as the manifest lists it: same sha256 and size, none missing, none extra."""
    version = int(manifest.get("version", 0))
    if version > BACKUP_VERSION:
        raise BackupError(f"{archive.name}: backup format {version} is newer than this Refinery reads")
    newest = migrations()[-1][0]
    if int(manifest.get("schema_version", 0)) > newest:
        raise BackupError(
            f"{archive.name}: its catalog has schema version {manifest['schema_version']}, newer than this "
            f"Refinery's {newest}: restore it with the Refinery that made it"
        )
    listed: dict[str, Any] = manifest.get("files") or {}
    if manifest.get("catalog", CATALOG_NAME) not in listed:
        raise BackupError(f"{archive.name}: the backup manifest lists no catalog")
    for name in sorted(found):
        if name not in listed:
            raise BackupError(f"{archive.name}: member {name} is not in the backup manifest")
    for name, entry in sorted(listed.items()):
        if name not in found:
            raise BackupError(f"{archive.name}: {name} is missing from the archive")
        digest, size = found[name]
        if digest != entry.get("sha256") or size != entry.get("bytes"):
            raise BackupError(
                f"{archive.name}: {name} differs from the backup manifest (sha256 or size): the archive was "
                "altered or damaged"
            )
