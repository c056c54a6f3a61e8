"""Artifact paths as the catalog stores them: relative to the workspace root when they lie inside it.

The workspace root is the folder that holds ``catalog.duckdb``. A path inside it is stored relative to it, in
POSIX form (``snapshots/snap_...``), and resolved against the root the catalog is opened from, so a workspace can
be moved, copied or restored from a backup. A path outside it (a base model folder of the user's) stays absolute.

Catalogs written before migration 0008 hold absolute paths everywhere. 0008 rewrites those of snapshots,
adapters and eval runs, whose folders always sit at ``<root>/<snapshots|adapters|evals>/<id>``. A base model
folder has no such fixed place, so an old absolute path is resolved when it is read (:func:`resolve_stored`): as
it is when it lies under the root; else by its tail from the first workspace folder name on (``models/...``)
when that exists under the root (the workspace was moved); else as it is (a folder outside the workspace).

Both conversions live here, the one place the curation side (snapshots) and refinery share.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from schemas.catalog import Catalog

#: The workspace's artifact folders (refinery/workspace.py lays them out) that a legacy absolute path is matched
#: against by its tail.
LAYOUT_FOLDERS = ("snapshots", "adapters", "evals", "models")


def workspace_root(catalog: Catalog) -> Path:
    """The folder that holds the catalog, which is the workspace root (absolute)."""
    return Path(os.path.abspath(catalog.path.parent))


def _inside(path: Path, root: Path) -> PurePosixPath | None:
    """``path`` relative to ``root`` when it lies inside it (symbolic links resolved if need be), else None."""
    for candidate, base in ((path, root), (path.resolve(), root.resolve())):
        try:
            return PurePosixPath(candidate.relative_to(base).as_posix())
        except ValueError:
            continue
    return None


def is_inside(path: Path | str, root: Path) -> bool:
    """Whether ``path`` lies inside the workspace ``root`` (what the catalog then stores relative to it)."""
    return _inside(Path(os.path.abspath(path)), Path(os.path.abspath(root))) is not None


def to_stored(path: Path | str, root: Path) -> str:
    """What the catalog stores for ``path``: relative to ``root`` in POSIX form when inside it, else absolute."""
    absolute = Path(os.path.abspath(path))
    relative = _inside(absolute, Path(os.path.abspath(root)))
    return str(absolute) if relative is None else relative.as_posix()


def resolve_stored(stored: str, root: Path) -> Path:
    """The absolute path a stored path names under the workspace ``root`` (see the module docstring for
    absolute paths written before 0008)."""
    root = Path(os.path.abspath(root))
    path = Path(stored)
    if not path.is_absolute():
        return root.joinpath(*PurePosixPath(stored).parts)
    if _inside(path, root) is not None:
        return path
    parts = path.parts
    for i, part in enumerate(parts[1:], start=1):
        if part in LAYOUT_FOLDERS:
            moved = root.joinpath(*parts[i:])
            if moved.exists():
                return moved
    return path
