"""The sentence encoder: a loaded sentence-transformers model that tokenises once, batches by a token budget, runs
the transformer in onnxruntime or torch and pools the vectors itself (docs/EMBEDDINGS.md: encoding, backends and
the measurements behind the budget and the default variant).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curation.embeddings import onnx_encoder
from curation.embeddings.model import (
    LOADED_RECIPES,
    EmbeddingError,
    configured_backend,
    configured_recipe,
    model_id,
    resolve_model_path,
)
from schemas.progress import log, progress

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
#: Probe texts compared between the ONNX session and torch before the session is used.
_PROBES = ("", "Hi", "How do I reset my password? I lost access to my account yesterday.", "word " * 600)


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
            LOADED_RECIPES[key] = _ENCODERS[key].recipe
        return _ENCODERS[key]
