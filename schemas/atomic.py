"""Crash-safe writes: a file or folder appears complete under its final name, or not at all.

A write that runs out of disk space (or quota, or the file-size limit) removes what it staged and raises
:class:`DiskFullError`, one line that names what was being written and how much space is free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from schemas.errors import Failure

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: How libraries that do not set ``errno`` (DuckDB, some of pyarrow's and torch's writers) say it.
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large")


class DiskFullError(Failure):
    """A write ran out of disk space; what it had staged was removed (exit 1)."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says that the disk, the quota or the file-size limit
    is exhausted."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DiskFullError):
            return True
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        if any(text in str(seen) for text in _FULL_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent); None if unknown."""
    for folder in (path, *path.parents):
        if folder.exists():
            with contextlib.suppress(OSError):
                return shutil.disk_usage(folder).free
            return None
    return None


def disk_full_error(path: Path, exc: BaseException) -> DiskFullError:
    """The one-line error for a write of ``path`` that failed with ``exc`` because the disk is full."""
    if isinstance(exc, DiskFullError):
        return exc
    free = free_bytes(path)
    detail = " ".join(str(exc).split())[:200]
    return DiskFullError(
        f"disk full while writing {path}: {'?' if free is None else free} bytes free (free some space and run "
        f"the command again; nothing was left half-written): {detail}"
    )


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from exc
        raise
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the file its normal mode
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from exc
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a staging folder; on success it is renamed to ``final`` in one step.

    If the body raises (or the process dies) the final folder never appears; leftovers are hidden folders
    named ``.<final>.staging-*`` which :func:`clean_staging` removes. A body or a rename that runs out of disk
    space raises :class:`DiskFullError` once the staging folder is removed.
    """
    if final.exists():
        raise FileExistsError(f"{final} already exists; artifacts are immutable")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(final, exc) from exc
        raise
    try:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                with file.open("rb") as handle:
                    os.fsync(handle.fileno())
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder its normal mode
        try:
            os.rename(staging, final)
        except OSError as exc:  # another process renamed its own staging folder into place first
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and final.exists():
                raise FileExistsError(f"{final} already exists; artifacts are immutable") from exc
            raise
        _fsync_dir(final.parent)
    except BaseException as exc:
        full = is_disk_full(exc)
        error = disk_full_error(final, exc) if full else None  # the free space before the staging is removed
        shutil.rmtree(staging, ignore_errors=True)
        if error is not None:
            raise error from exc
        raise


def clean_staging(parent: Path) -> list[Path]:
    """Remove staging folders left by a killed process under ``parent``; return what was removed."""
    removed = []
    if parent.exists():
        for leftover in parent.glob(".*.staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed
