"""Use a trained adapter: fold it into its base model (a standalone folder), or try it on a prompt.

Both verify before use: the adapter's manifest (every file hash) and the base model's weight hash against the
catalog row written when the adapter was trained. The merged folder gets a manifest of its own, so
``load_manifest(OUT)`` proves later that nobody changed it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refinery.errors import CheckFailed, UsageError
from refinery.pipeline import ADAPTER_SUBDIR
from refinery.workspace import Workspace
from schemas.atomic import atomic_directory
from schemas.ids import sha256_file
from schemas.manifest import Manifest, load_manifest, new_manifest, write_manifest

#: ``kind`` of a merged model's manifest. Not an artifact kind of the catalog: a merged folder lives wherever
#: the user puts it, and its id is the adapter's id plus :data:`MERGED_SUFFIX`.
MERGED_KIND = "merged_model"
MERGED_SUFFIX = "-merged"


@dataclass(frozen=True)
class VerifiedAdapter:
    """An adapter whose manifest and base model were checked: the paths to load and their ids."""

    adapter_id: str
    base_model_id: str
    base_path: Path
    adapter_path: Path
    trust_remote_code: bool
    manifest: Manifest


def verified_adapter(ws: Workspace, adapter_id: str) -> VerifiedAdapter:
    """Look the adapter up in the catalog, verify its manifest and its base model's weights.

    Unknown adapter: :class:`UsageError`. Altered adapter files: ``ManifestError``. A base model folder that is
    gone or whose weights changed since training: :class:`CheckFailed`.
    """
    from training.base_model import BaseModelError, check_model_folder, model_files, model_files_sha256

    catalog = ws.catalog
    found = catalog.query("SELECT adapter_id, base_model_id, path FROM adapters WHERE adapter_id = ?", [adapter_id])
    if not found:
        raise UsageError(f"no adapter {adapter_id} in the catalog (train one with `refinery train`)")
    row = found[0]
    folder = ws.artifact_path(row["path"])
    manifest = load_manifest(folder)  # every file hash checked
    base_rows = catalog.query("SELECT path, sha256 FROM base_models WHERE base_model_id = ?", [row["base_model_id"]])
    if not base_rows:
        raise CheckFailed(f"adapter {adapter_id}: its base model {row['base_model_id']} is not in the catalog")
    base_path = ws.artifact_path(base_rows[0]["path"])
    base_info: dict[str, Any] = manifest.config.get("base_model", {})
    trust = bool(base_info.get("trust_remote_code", False))
    try:
        check_model_folder(base_path, trust)
    except BaseModelError as exc:
        raise CheckFailed(f"base model of {adapter_id}: {exc}") from exc
    digest = model_files_sha256({f.name: sha256_file(f) for f in model_files(base_path)})
    if digest != base_rows[0]["sha256"]:
        raise CheckFailed(
            f"base model {row['base_model_id']} at {base_path} changed since {adapter_id} was trained "
            "(weight hash differs from the catalog)"
        )
    return VerifiedAdapter(
        adapter_id=adapter_id,
        base_model_id=row["base_model_id"],
        base_path=base_path,
        adapter_path=folder / ADAPTER_SUBDIR,
        trust_remote_code=trust,
        manifest=manifest,
    )


def merge(ws: Workspace, adapter_id: str, out: Path) -> Path:
    """Write base + adapter folded into one standalone model folder at ``out`` (which must not exist).

    The folder holds safetensors weights, config, tokenizer and a ``manifest.json`` (kind ``merged_model``,
    id ``<adapter_id>-merged``, parents [adapter, base model]); it appears complete or not at all.
    """
    from training.inference import merge_adapter

    out = Path(out).expanduser().resolve()
    if out.exists():
        raise UsageError(f"{out} already exists; choose a new folder for the merged model")
    adapter = verified_adapter(ws, adapter_id)
    with atomic_directory(out) as staging:
        inner = staging / ".merge"
        merge_adapter(adapter.base_path, adapter.adapter_path, inner, adapter.trust_remote_code)
        for item in inner.iterdir():
            shutil.move(str(item), staging / item.name)
        inner.rmdir()
        manifest = new_manifest(
            MERGED_KIND,
            adapter_id + MERGED_SUFFIX,
            parents=[adapter_id, adapter.base_model_id],
            config=adapter.manifest.config,  # the adapter's training config and base model: all that made it
            extra={
                "adapter_id": adapter_id,
                "base_model_id": adapter.base_model_id,
                "snapshot_id": adapter.manifest.extra.get("snapshot_id"),
                "adapter_files": adapter.manifest.files,
            },
        )
        write_manifest(staging, manifest)
    load_manifest(out)
    return out


def generate_text(
    ws: Workspace,
    adapter_id: str,
    prompt: str,
    system: str | None = None,
    max_new_tokens: int = 128,
    base_only: bool = False,
) -> str:
    """The greedy answer to ``prompt`` (chat template applied) from base + adapter, or the base model alone."""
    from training.inference import generate, load_for_inference

    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    adapter = verified_adapter(ws, adapter_id)
    model, tokenizer = load_for_inference(
        adapter.base_path, None if base_only else adapter.adapter_path, adapter.trust_remote_code
    )
    return generate(
        model, tokenizer, [{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens, system_prompt=system
    )
