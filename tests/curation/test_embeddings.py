"""The embedding encoder and its workspace cache, with the real all-MiniLM-L6-v2, and the blocked kNN."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from curation.embeddings import cache as embedding_cache
from curation.embeddings.cache import _CACHES, EmbedStats, embed_texts, record_embeddings
from curation.embeddings.encoder import Encoder, get_encoder, normalize_rows
from curation.embeddings.model import EmbeddingError, model_id
from curation.similarity.knn import knn
from schemas.catalog import Catalog
from tests.curation.ingest_support import run, write_lines

TEXTS = [
    "How do I reset my password?",
    "",
    "Wie setze ich mein Passwort zurück?",
    "我的卡什么时候到？",
    "The quick brown fox jumps over the lazy dog. " * 40,
    "How do I reset my password?",
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return get_encoder()


def _bar(encoder: Encoder) -> float:
    """Float32 backends (torch, float32 ONNX) match the reference to float precision; int8 ONNX to 0.99."""
    return 0.9999 if encoder.recipe == "" else 0.99


def _reference(encoder: Encoder, texts: list[str]) -> np.ndarray:
    ref = encoder.model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    return normalize_rows(np.asarray(ref))


def test_matches_sentence_transformers_including_odd_texts(encoder: Encoder) -> None:
    assert encoder.fast_path
    got = embed_texts(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = (got * _reference(encoder, TEXTS)).sum(axis=1)
    assert cosine.min() > _bar(encoder)
    assert np.array_equal(got[0], got[5])  # identical texts: one vector


class _TokenizerSpy:
    """The encoder's tokenizer, recording the length of every text it is asked to tokenise."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def __call__(self, texts: str | list[str], *args: Any, **kwargs: Any) -> Any:
        self.lengths += [len(texts)] if isinstance(texts, str) else [len(t) for t in texts]
        return self.tokenizer(texts, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def test_megabyte_response_is_bounded_and_exact(encoder: Encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    huge = "word " * 200_000 + "tail"
    spy = _TokenizerSpy(encoder.tokenizer)
    monkeypatch.setattr(encoder, "tokenizer", spy)
    vector = embed_texts([huge])
    monkeypatch.undo()
    # bounded by construction, not by a stopwatch: the tokenizer never sees more than max_length * 32 characters
    assert spy.lengths and max(spy.lengths) <= encoder.max_length * 32 < len(huge)
    assert (vector[0] @ _reference(encoder, [huge])[0]) > _bar(encoder)  # and the cut changes no token used


def test_cache_hit_embeds_nothing_and_survives_a_new_process_view(tmp_path: Path, encoder: Encoder) -> None:
    stats: list[EmbedStats] = []
    first = embed_texts(TEXTS, cache_dir=tmp_path, field="prompt", stats=stats)
    assert stats[-1] == EmbedStats(6, 0, 5)
    before = encoder.texts_encoded
    _CACHES.clear()  # as a fresh process would: shards are read back from disk
    second = embed_texts(TEXTS, cache_dir=tmp_path, field="prompt", stats=stats)
    assert encoder.texts_encoded == before and stats[-1] == EmbedStats(6, 6, 0)
    assert (first * second).sum(axis=1).min() > 0.9999  # float16 storage
    # another field is another key: embedded again
    embed_texts(TEXTS[:1], cache_dir=tmp_path, field="response", stats=stats)
    assert stats[-1].encoded == 1


def test_killed_and_damaged_shard_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["alpha beta", "gamma delta", "epsilon zeta"]

    def killed(src: str, dst: str) -> None:  # the process dies between writing the temp file and renaming it
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt, match="killed"):
        embed_texts(texts, cache_dir=tmp_path, field="prompt")
    monkeypatch.undo()
    folder = tmp_path / model_id() / "prompt"
    assert list(folder.glob("*.npz")) == []
    (folder / ".leftover.npz.tmp").write_bytes(b"half a shard")  # a temp file left by a SIGKILL
    _CACHES.clear()
    stats: list[EmbedStats] = []
    good = embed_texts(texts, cache_dir=tmp_path, field="prompt", stats=stats)
    assert stats[-1].encoded == 3 and not list(folder.glob(".*.tmp"))
    (shard,) = folder.glob("*.npz")
    shard.write_bytes(shard.read_bytes()[:100])  # damaged on disk
    _CACHES.clear()
    again = embed_texts(texts, cache_dir=tmp_path, field="prompt", stats=stats)
    assert stats[-1] == EmbedStats(3, 0, 3)
    assert (good * again).sum(axis=1).min() > 0.9999
    assert len(list(folder.glob("*.corrupt"))) == 1


def test_shards_are_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding_cache, "MAX_SHARDS", 2)
    monkeypatch.setattr(embedding_cache, "WRITE_CHUNK", 1)
    embed_texts([f"text number {i}" for i in range(4)], cache_dir=tmp_path, field="prompt")
    folder = tmp_path / model_id() / "prompt"
    assert len(list(folder.glob("*.npz"))) <= 2
    _CACHES.clear()
    stats: list[EmbedStats] = []
    embed_texts([f"text number {i}" for i in range(4)], cache_dir=tmp_path, field="prompt", stats=stats)
    assert stats[-1].cached == 4


def test_record_embeddings(catalog: Catalog, tmp_path: Path) -> None:
    rows = [{"instruction": f"Question {i}: what is {i} plus {i}?", "output": f"It is {2 * i}."} for i in range(3)]
    run(catalog, [write_lines(tmp_path / "a.jsonl", rows)])
    ids = [r["record_id"] for r in catalog.query("SELECT record_id FROM records ORDER BY prompt DESC")]
    cold = record_embeddings(catalog, ids, compute_missing=False)
    assert cold.shape == (3, 384) and not cold.any()
    vectors = record_embeddings(catalog, ids)
    assert (catalog.path.parent / "embeddings" / model_id() / "prompt").is_dir()
    again = record_embeddings(catalog, ids[::-1], compute_missing=False)
    assert (vectors[::-1] * again).sum(axis=1).min() > 0.9999
    with pytest.raises(EmbeddingError, match="not in the catalog"):
        record_embeddings(catalog, [*ids, "rec_missing"])
    with pytest.raises(EmbeddingError, match="field must be one of"):
        record_embeddings(catalog, ids, field="label")


def test_bad_model_folder(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingError, match="no sentence-transformers model"):
        get_encoder(str(tmp_path))
    with pytest.raises(EmbeddingError, match="is not a folder"):
        model_id(str(tmp_path / "nope"))


def test_knn_matches_brute_force_and_small_sets() -> None:
    rng = np.random.default_rng(0)
    x = normalize_rows(rng.normal(size=(50, 8)))
    found = knn(x, k=5, query_block=7, base_block=9, show_progress=False)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    assert np.array_equal(found.indices, expected)
    np.testing.assert_allclose(found.similarities, np.take_along_axis(sims, expected, axis=1), rtol=1e-5)
    three = knn(x[:3], k=10, show_progress=False)  # k > n - 1
    assert three.count().tolist() == [2, 2, 2] and (three.indices[:, 2:] == -1).all()
    one = knn(x[:1], k=3, show_progress=False)
    assert one.count().tolist() == [0]
    with pytest.raises(ValueError, match="k must be"):
        knn(x, k=0)
