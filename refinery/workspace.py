"""The workspace folder: the catalog plus immutable artifacts, laid out in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from schemas.artifact_paths import resolve_stored, to_stored
from schemas.catalog import CATALOG_NAME, Catalog

DEFAULT_WORKSPACE = "refinery-workspace"
WORKSPACE_ENV = "REFINERY_WORKSPACE"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.root / CATALOG_NAME)

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    @property
    def evals_dir(self) -> Path:
        return self.root / "evals"

    @property
    def models_dir(self) -> Path:
        """Converted base models (the default SmolLM2 is converted once, here)."""
        return self.root / "models"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def stored_path(self, path: Path | str) -> str:
        """What the catalog stores for an artifact folder: relative to the root (POSIX) when inside it, else
        absolute (schemas/artifact_paths.py)."""
        return to_stored(path, self.root)

    def artifact_path(self, stored: str) -> Path:
        """The absolute path of a catalog ``path`` value, resolved against this workspace's root."""
        return resolve_stored(stored, self.root)


def resolve_workspace_path(path: Path | str | None) -> Path:
    """``--workspace`` if given, else ``$REFINERY_WORKSPACE``, else ``./refinery-workspace``."""
    chosen = path or os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE
    return Path(chosen).expanduser().resolve()


def open_workspace(path: Path | str | None = None) -> Workspace:
    """Create the workspace if needed and bring its catalog up to the newest migration."""
    ws = Workspace(resolve_workspace_path(path))
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.catalog.migrate()
    return ws
