"""The embedding cache of a workspace and the functions that read and fill it: vectors by model id, field and text
hash in append-only, self-verifying shards (docs/EMBEDDINGS.md: the shard format and what a killed writer leaves).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curation.embeddings.encoder import get_encoder, normalize_rows
from curation.embeddings.model import EmbeddingError, model_id
from schemas.atomic import write_bytes_atomic
from schemas.catalog import Catalog
from schemas.progress import log

if TYPE_CHECKING:
    from curation.executors import Executor

#: Fields of a record that can be embedded.
FIELDS = ("prompt", "response")
#: Shards per cache folder before they are merged into one.
MAX_SHARDS = 32
#: Vectors per shard written during one call (a killed run loses at most one chunk of work).
WRITE_CHUNK = 4096
_KEY_BYTES = 16


def text_key(text: str) -> bytes:
    """The cache key of a text: the first 128 bits of the SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:_KEY_BYTES]


@dataclass
class _Loaded:
    shards: set[str] = field(default_factory=set)
    index: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # key -> (block, row)
    blocks: list[np.ndarray] = field(default_factory=list)


class CacheCorruptError(Exception):
    """A shard's bytes do not match the hash in its name."""


class EmbeddingCache:
    """The append-only shard folder of one (model id, field); see the module docstring for the format."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded = _Loaded()
        self.corrupt: list[Path] = []

    def _shard_names(self) -> set[str]:
        if not self.folder.is_dir():
            return set()
        return {p.name for p in self.folder.glob("*.npz") if not p.name.startswith(".")}

    def _read_shard(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        data = (self.folder / name).read_bytes()
        if hashlib.sha256(data).hexdigest()[:32] != name.removesuffix(".npz"):
            raise CacheCorruptError(f"{self.folder / name}: content does not match its hash")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            keys, vectors = npz["keys"], npz["vectors"]
        if keys.ndim != 2 or keys.shape[1] != _KEY_BYTES or vectors.ndim != 2 or len(keys) != len(vectors):
            raise CacheCorruptError(f"{self.folder / name}: unexpected array shapes {keys.shape}, {vectors.shape}")
        return keys, vectors

    def refresh(self) -> None:
        """Load shards written since the last call (by this or another process); quarantine damaged ones."""
        names = self._shard_names()
        if not self._loaded.shards <= names:  # merged or removed by another process: start over
            self._loaded = _Loaded()
        for name in sorted(names - self._loaded.shards):
            try:
                keys, vectors = self._read_shard(name)
            except (CacheCorruptError, OSError, ValueError, KeyError) as exc:
                bad = self.folder / (name + ".corrupt")
                with contextlib.suppress(OSError):
                    os.replace(self.folder / name, bad)
                self.corrupt.append(bad)
                log(f"[yellow]embedding cache: ignored damaged shard[/yellow] {exc}")
                continue
            block = len(self._loaded.blocks)
            self._loaded.blocks.append(vectors)
            index = self._loaded.index
            for row, key in enumerate(keys.tobytes()[i : i + _KEY_BYTES] for i in range(0, keys.size, _KEY_BYTES)):
                index[key] = (block, row)
            self._loaded.shards.add(name)

    def __len__(self) -> int:
        return len(self._loaded.index)

    def lookup(self, keys: Sequence[bytes], dimension: int) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, float32 unit rows; zero where not found) for ``keys``."""
        self.refresh()
        found = np.zeros(len(keys), dtype=bool)
        out = np.zeros((len(keys), dimension), dtype=np.float32)
        index, blocks = self._loaded.index, self._loaded.blocks
        for i, key in enumerate(keys):
            hit = index.get(key)
            if hit is not None and blocks[hit[0]].shape[1] == dimension:
                out[i] = blocks[hit[0]][hit[1]]
                found[i] = True
        if found.any():
            out[found] = normalize_rows(out[found])
        return found, out

    def append(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Write one shard with ``keys`` -> ``vectors`` (atomically); merge shards when there are too many."""
        if not keys:
            return
        buffer = io.BytesIO()
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), _KEY_BYTES)
        np.savez(buffer, keys=key_array, vectors=np.asarray(vectors, dtype=np.float16))
        data = buffer.getvalue()
        write_bytes_atomic(self.folder / (hashlib.sha256(data).hexdigest()[:32] + ".npz"), data)
        if len(self._shard_names()) > MAX_SHARDS:
            self.compact()

    def compact(self) -> None:
        """Merge every shard into one (new shard written before the old ones are removed)."""
        self.refresh()
        if len(self._loaded.shards) <= 1:
            return
        old = set(self._loaded.shards)
        index, blocks = self._loaded.index, self._loaded.blocks
        keys = list(index)
        vectors = np.stack([blocks[b][r] for b, r in index.values()]) if keys else np.zeros((0, 0), np.float16)
        buffer = io.BytesIO()
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), _KEY_BYTES)
        np.savez(buffer, keys=key_array, vectors=vectors.astype(np.float16))
        data = buffer.getvalue()
        merged = hashlib.sha256(data).hexdigest()[:32] + ".npz"
        write_bytes_atomic(self.folder / merged, data)
        for name in old - {merged}:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / name).unlink()
        self._loaded = _Loaded()

    def clean_temporary(self) -> list[Path]:
        """Remove temporary files left by writers that were killed (hidden ``.*.tmp`` files)."""
        removed = []
        if self.folder.is_dir():
            for leftover in self.folder.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
                    removed.append(leftover)
        return removed


_CACHES: dict[Path, EmbeddingCache] = {}


def cache_for(
    cache_dir: Path, model: str | os.PathLike[str] | None, field_name: str, recipe: str | None = None
) -> EmbeddingCache:
    """The process-wide cache object of ``cache_dir/<model id>/<field>`` (loaded shards are kept in memory)."""
    folder = Path(cache_dir) / model_id(model, recipe) / field_name
    if folder not in _CACHES:
        _CACHES[folder] = EmbeddingCache(folder)
    return _CACHES[folder]


@dataclass(frozen=True)
class EmbedStats:
    texts: int
    cached: int
    encoded: int  # distinct texts run through the model
    backend: str = field(default="", compare=False)  # Encoder.backend when an encoder was loaded


def embed_texts(
    texts: Sequence[str],
    model: str | os.PathLike[str] | None = None,
    cache_dir: Path | None = None,
    field: str = "text",
    compute_missing: bool = True,
    stats: list[EmbedStats] | None = None,
    executor: Executor | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts`` (one row per text, in order).

    With ``cache_dir``, vectors come from ``cache_dir/<model id>/<field>/`` where present and new ones are
    stored there (in chunks of :data:`WRITE_CHUNK`, each shard atomic). Identical texts are embedded once.
    With ``compute_missing=False`` nothing is embedded and rows not in the cache are all zeros (never an error:
    callers test ``np.any(row)``). ``stats``, when given, receives one :class:`EmbedStats`.

    With a distributed ``executor`` (Ray), the chunks are encoded on a pool of workers that each load the model
    once (stage ``embed:<field>``); each chunk is the one this process would encode, so its batches, and its
    vectors, are the same. The cache is written here, by the driver, only.
    """
    if not field or "/" in field or field.startswith("."):
        raise EmbeddingError(f"field name {field!r} is not usable as a cache folder name")
    texts = list(texts)
    encoder = get_encoder(model) if compute_missing or cache_dir is None else None
    dimension = encoder.dimension if encoder is not None else 0
    keys = [text_key(t) for t in texts]
    recipe = encoder.recipe if encoder is not None else None
    cache = cache_for(cache_dir, model, field, recipe) if cache_dir is not None else None
    if cache is not None:
        cache.clean_temporary()
        if dimension == 0:  # no encoder loaded: take the dimension from the cache itself
            cache.refresh()
            dimension = next((b.shape[1] for b in cache._loaded.blocks), 0)
        if dimension == 0:  # an empty cache: the model says how wide a row of zeros is
            dimension = get_encoder(model).dimension
        found, out = cache.lookup(keys, dimension)
    else:
        found, out = np.zeros(len(texts), dtype=bool), np.zeros((len(texts), dimension), dtype=np.float32)
    cached = int(found.sum())
    first_of: dict[bytes, int] = {}
    for i in np.flatnonzero(~found).tolist():
        first_of.setdefault(keys[i], i)
    todo = list(first_of.values())
    if compute_missing and todo and encoder is not None:
        chunks = [todo[lo : lo + WRITE_CHUNK] for lo in range(0, len(todo), WRITE_CHUNK)]
        if executor is not None and executor.kind != "local":
            factory = functools.partial(get_encoder, model)
            shards = [[texts[i] for i in chunk] for chunk in chunks]
            encoded = executor.map_actors(factory, "encode", shards, stage=f"embed:{field}")
        else:
            encoded = (encoder.encode([texts[i] for i in chunk]) for chunk in chunks)
        for chunk, vectors in zip(chunks, encoded, strict=True):
            if cache is not None:  # as the cache gives them back (float16, normalised): a rerun scores alike
                vectors = normalize_rows(np.asarray(vectors, dtype=np.float16).astype(np.float32))
            out[chunk] = vectors
            if cache is not None:
                cache.append([keys[i] for i in chunk], vectors)
        for i in np.flatnonzero(~found).tolist():  # repeats of a text just embedded
            out[i] = out[first_of[keys[i]]]
    if stats is not None:
        backend = encoder.backend if encoder is not None else ""
        stats.append(EmbedStats(len(texts), cached, len(todo) if compute_missing else 0, backend))
    return out


def embeddings_dir(catalog: Catalog) -> Path:
    """The workspace's embedding cache folder: ``<catalog folder>/embeddings``."""
    return catalog.path.parent / "embeddings"


def record_texts(catalog: Catalog, record_ids: Sequence[str], field: str) -> list[str]:
    """The ``field`` text of each record, in the order of ``record_ids``; raises for unknown ids."""
    if field not in FIELDS:
        raise EmbeddingError(f"field must be one of {', '.join(FIELDS)}, not {field!r}")
    import pyarrow as pa

    wanted = pa.table({"record_id": list(record_ids), "pos": np.arange(len(record_ids), dtype=np.int64)})
    with catalog.read() as con:
        con.register("wanted_records", wanted)
        rows = con.execute(f"SELECT w.pos, r.{field} FROM wanted_records w JOIN records r USING (record_id)").fetchall()
        con.unregister("wanted_records")
    texts: list[str | None] = [None] * len(record_ids)
    for pos, text in rows:
        texts[pos] = text or ""
    missing = [record_ids[i] for i, t in enumerate(texts) if t is None]
    if missing:
        raise EmbeddingError(f"{len(missing)} record id(s) not in the catalog, e.g. {missing[0]!r}")
    return [t or "" for t in texts]


def record_embeddings(
    catalog: Catalog,
    record_ids: Sequence[str],
    field: str = "prompt",
    model: str | None = None,
    compute_missing: bool = True,
) -> np.ndarray:
    """L2-normalised float32 embeddings (len(record_ids) x d) of the records' ``field`` text, in id order.

    Vectors are read from and added to the workspace cache (``<catalog folder>/embeddings``). With
    ``compute_missing=False`` nothing is embedded: records whose text is not cached get a row of zeros (test
    with ``np.any(row)``). Raises :class:`EmbeddingError` for an unknown field or record ids not in the catalog.
    """
    texts = record_texts(catalog, record_ids, field)
    return embed_texts(texts, model, embeddings_dir(catalog), field, compute_missing)
