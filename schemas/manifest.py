"""Artifact manifests: provenance (parents, config, versions, hardware) plus the hash of every file.

A manifest is written last and atomically into an artifact folder; :func:`load_manifest` recomputes every
file hash and refuses an artifact whose files were changed, removed or added since.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from schemas.atomic import write_text_atomic
from schemas.errors import Failure
from schemas.ids import sha256_file, sha256_tree

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
#: Libraries whose versions are stamped into every manifest (those installed, that is).
TRACKED_LIBRARIES = (
    "refinery",
    "duckdb",
    "pyarrow",
    "pydantic",
    "numpy",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "tokenizers",
    "datasets",
    "datasketch",
    "sentence-transformers",
    "argilla",
)


class ManifestError(Failure):
    """An artifact failed verification: missing, unreadable or altered."""


class Manifest(BaseModel):
    manifest_version: int = Field(default=MANIFEST_VERSION, description="Format version of this manifest.")
    kind: str = Field(description="Artifact kind: snapshot, adapter, eval, base_model, ...")
    id: str = Field(description="The artifact id (derived from its inputs).")
    created_at: str = Field(description="UTC time the artifact was written (ISO 8601).")
    parents: list[str] = Field(default_factory=list, description="Ids of the artifacts it was made from.")
    config: dict[str, Any] = Field(default_factory=dict, description="The full configuration used.")
    files: dict[str, str] = Field(default_factory=dict, description="Relative path -> sha256 of every file.")
    counts: dict[str, int] = Field(default_factory=dict, description="Row or item counts.")
    versions: dict[str, str] = Field(default_factory=dict, description="Library versions at write time.")
    hardware: dict[str, Any] = Field(default_factory=dict, description="Machine the artifact was made on.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Kind-specific details (metrics, ...).")


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def hardware_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    torch = sys.modules.get("torch")  # only report the accelerator when torch is already in use
    if torch is not None and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_manifest(kind: str, artifact_id: str, **fields: Any) -> Manifest:
    return Manifest(
        kind=kind,
        id=artifact_id,
        created_at=utc_now(),
        versions=library_versions(),
        hardware=hardware_info(),
        **fields,
    )


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Hash every file in ``folder`` into ``manifest.files`` and write ``manifest.json`` atomically."""
    manifest.files = sha256_tree(folder, exclude=[MANIFEST_NAME])
    path = folder / MANIFEST_NAME
    write_text_atomic(path, json.dumps(manifest.model_dump(), indent=2, sort_keys=True) + "\n")
    return path


def load_manifest(folder: Path, verify: bool = True) -> Manifest:
    """Read ``folder/manifest.json``; with ``verify``, recompute every file hash and check the file set."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{folder}: manifest.json is missing")
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc.__class__.__name__})") from exc
    if verify:
        problems = verify_files(folder, manifest)
        if problems:
            raise ManifestError(f"{folder}: " + "; ".join(problems))
    return manifest


def verify_files(folder: Path, manifest: Manifest) -> list[str]:
    """Every difference between the files on disk and the manifest, as human-readable lines."""
    problems: list[str] = []
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}
    for rel, expected in sorted(manifest.files.items()):
        file = folder / rel
        if rel not in on_disk:
            problems.append(f"{rel} is missing")
        elif sha256_file(file) != expected:
            problems.append(f"{rel} was modified (sha256 differs from the manifest)")
    for rel in sorted(on_disk - set(manifest.files)):
        problems.append(f"{rel} is not listed in the manifest")
    return problems


def manifest_sha256(folder: Path) -> str:
    return sha256_file(folder / MANIFEST_NAME)
