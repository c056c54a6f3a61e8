"""The ONNX Runtime backend of the encoder: agreement with torch, the stored export, fallbacks, the cache key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from curation.embeddings import onnx_encoder
from curation.embeddings.cache import EmbedStats, embed_texts
from curation.embeddings.encoder import Encoder, get_encoder
from curation.embeddings.model import ENCODER_VERSION, EmbeddingError, configured_recipe, default_model_path, model_id
from schemas.ids import canonical_json, sha256_text, sha256_tree
from tests.support.require import require_module


@pytest.fixture(scope="module", autouse=True)
def _onnx_installed() -> None:
    """onnxruntime and onnx come with the embed extra: skipped without them, a failure under CI."""
    for name in ("onnxruntime", "onnx"):
        require_module(name, "pip install -e '.[embed]'")


TEXTS = [
    "",
    "Hi",
    "How do I reset my password?",
    "Wie setze ich mein Passwort zurück? 我的卡什么时候到？",
    "Identify the intent of the following customer message. Answer with the intent label only.\n\n"
    "Customer message: my card has not arrived yet, it has been two weeks",
    "The quick brown fox jumps over the lazy dog. " * 60,  # over max_seq_length tokens: truncated
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private export folder for the module (one export, shared by the tests)."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REFINERY_ONNX_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def reference(onnx_cache: Path) -> np.ndarray:
    return Encoder(default_model_path(), backend="torch").encode(TEXTS)


def test_float32_onnx_equals_torch(onnx_cache: Path, reference: np.ndarray) -> None:
    for variant in ("fp32", "fused"):
        encoder = Encoder(default_model_path(), backend="onnx", variant=variant)
        assert encoder.backend == f"onnxruntime {variant}" and encoder.recipe == ""
        got = encoder.encode(TEXTS)
        assert got.shape == reference.shape and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert (got * reference).sum(axis=1).min() > 0.9999


@pytest.mark.parametrize("variant", ["int8-row", "int8-row7"])
def test_int8_row_within_the_bar_and_short_texts_exact(onnx_cache: Path, reference: np.ndarray, variant: str) -> None:
    encoder = Encoder(default_model_path(), backend="onnx", variant=variant)
    assert encoder.backend == f"onnxruntime {variant}" and encoder.recipe == variant
    got = encoder.encode(TEXTS)
    cosine = (got * reference).sum(axis=1)
    assert cosine.min() >= 0.99, cosine
    assert cosine[:2].min() > 0.9999  # under EXACT_BELOW_TOKENS tokens: the float32 session
    assert (got[1:2] == encoder.encode(TEXTS[1:2])).all()  # a row does not depend on its batch


@pytest.mark.slow
def test_corrupt_export_is_detected_and_rebuilt(onnx_cache: Path, reference: np.ndarray) -> None:
    path = default_model_path()
    Encoder(path, backend="onnx", variant="fused")  # built (or verified) by now
    folder = onnx_cache / model_id(path, recipe="")
    stored = folder / "fused.onnx"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, another hash
    stored.write_bytes(bytes(data))
    encoder = Encoder(path, backend="onnx", variant="fused")
    assert encoder.onnx_store is not None and encoder.onnx_store.rebuilt == ["fused"]
    assert (encoder.encode(TEXTS) * reference).sum(axis=1).min() > 0.9999
    stored.write_bytes(stored.read_bytes()[:1000])  # truncated
    assert Encoder(path, backend="onnx", variant="fused").onnx_store.rebuilt == ["fused"]  # type: ignore[union-attr]
    stamp = json.loads((folder / "fused.json").read_text())
    (folder / "fused.json").write_text(json.dumps({**stamp, "recipe": -1}))  # made by another recipe: stale
    assert Encoder(path, backend="onnx", variant="fused").onnx_store.rebuilt == ["fused"]  # type: ignore[union-attr]
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temporary files
    again = Encoder(path, backend="onnx", variant="fused")
    assert again.onnx_store is not None and again.onnx_store.rebuilt == []  # verified, reused


def test_torch_fallback(onnx_cache: Path, reference: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    path = default_model_path()
    monkeypatch.setenv("REFINERY_EMBED_BACKEND", "torch")
    encoder = get_encoder()
    assert encoder.backend == "torch" and encoder.recipe == "" and encoder.fallback_reason == ""
    stats: list[EmbedStats] = []
    got = embed_texts(TEXTS, stats=stats)
    assert stats[-1].backend == "torch" and (got * reference).sum(axis=1).min() > 0.9999
    monkeypatch.delenv("REFINERY_EMBED_BACKEND")

    monkeypatch.setattr(onnx_encoder, "available", lambda: False)  # onnxruntime not installed
    missing = Encoder(path, backend="auto")
    assert missing.backend == "torch" and "not installed" in missing.fallback_reason
    assert configured_recipe("auto", "int8-row") == ""  # float32 vectors: the float32 cache key
    with pytest.raises(EmbeddingError, match="not installed"):
        Encoder(path, backend="onnx")
    monkeypatch.undo()

    monkeypatch.setenv("REFINERY_ONNX_CACHE", str(onnx_cache / "empty"))

    def broken(transformer: object) -> bytes:
        raise onnx_encoder.OnnxUnavailable("ONNX export failed: simulated")

    monkeypatch.setattr(onnx_encoder, "export_transformer", broken)
    failed = Encoder(path, backend="auto", variant="fp32")
    assert failed.backend == "torch" and "simulated" in failed.fallback_reason
    assert (failed.encode(TEXTS) * reference).sum(axis=1).min() > 0.9999


def test_cache_key_follows_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    path = default_model_path()
    legacy = "emb_" + sha256_text(canonical_json({"files": sha256_tree(path), "encoder_version": ENCODER_VERSION}))
    assert model_id(recipe="") == legacy[:20]  # float32 (torch or ONNX): the id caches always had
    assert model_id(recipe="int8-row") not in (legacy[:20], model_id(recipe="int8-tensor"))
    monkeypatch.setenv("REFINERY_EMBED_BACKEND", "onnx")
    monkeypatch.setenv("REFINERY_EMBED_ONNX", "fused")
    assert configured_recipe() == ""
    monkeypatch.setenv("REFINERY_EMBED_ONNX", "int8-row")
    assert configured_recipe() == "int8-row"
    monkeypatch.setenv("REFINERY_EMBED_ONNX", "int4")
    with pytest.raises(EmbeddingError, match="ONNX variant must be one of"):
        configured_recipe()


@pytest.mark.parametrize("signed", [False, True])
def test_quantize_rows_on_a_small_graph(signed: bool) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 32)).astype(np.float32)
    weight[:, 0] = np.abs(weight[:, 0])  # column 0 all positive: with row 1 below, every pair sum is extreme
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 32])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_encoder.OPSET)])
    model.ir_version = 8
    quantized = onnx_encoder.quantize_rows(model, (lambda k, n: True) if signed else None)
    onnx.checker.check_model(quantized)
    assert "MatMul" not in {n.op_type for n in quantized.graph.node}
    weight_types = {i.data_type for i in quantized.graph.initializer if i.name.endswith("_w")}
    assert weight_types == {TensorProto.INT8 if signed else TensorProto.UINT8}
    session = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(3, 5, 64)).astype(np.float32)
    x[0, 0] *= 100  # one outlier row: per-row scales keep the other rows exact to 8 bits
    x[0, 1] = np.abs(x[0, 1]).max()  # all activations at +127 (uint8 255) against column 0's positive weights
    (got,) = session.run(None, {"x": x})
    exact = x @ weight
    assert got.shape == exact.shape
    error = np.abs(got - exact).max(axis=-1) / np.abs(exact).max(axis=-1)
    assert error.max() < 0.03


def test_batches_side_by_side_give_the_same_vectors(onnx_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [f"{text} {i}" for i, text in enumerate(TEXTS * 40)]  # many batches of different widths
    path = default_model_path()
    serial = Encoder(path, backend="onnx", variant="fp32", threads=1)
    pooled = Encoder(path, backend="onnx", variant="fp32", threads=2)
    assert np.array_equal(serial.encode(texts), pooled.encode(texts))  # rows in input order, same numbers
    batches: list[int] = []

    def counting(ids: list[list[int]], batch: list[str]) -> np.ndarray:
        batches.append(len(ids))
        return np.zeros((len(ids), serial.dimension), dtype=np.float32)

    monkeypatch.setattr(serial, "_encode_batch", counting)
    serial.encode(texts)

    calls: list[int] = []
    real = pooled._encode_batch

    def failing(ids: list[list[int]], batch: list[str]) -> np.ndarray:
        calls.append(len(ids))
        if len(calls) == 3:
            raise RuntimeError("simulated session failure")
        return real(ids, batch)

    monkeypatch.setattr(pooled, "_encode_batch", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        pooled.encode(texts)
    assert len(batches) > 10 and 3 <= len(calls) < len(batches)  # queued batches dropped, not run after the failure
