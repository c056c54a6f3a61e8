"""ONNX Runtime backend of :class:`curation.embeddings.encoder.Encoder`: the transformer exported once, run by
onnxruntime.

Only the transformer (``input_ids``, ``attention_mask`` -> ``last_hidden_state``, dynamic batch and sequence axes)
runs here; tokenising, batching, pooling and normalising stay in ``curation.embeddings.encoder``.

Variants (:data:`VARIANTS`), each derived from the previous file and stored once per model:

- ``fp32``: ``torch.onnx.export`` of the transformer (eager attention, opset 17), run with graph optimisation
  level ALL;
- ``fused``: ``fp32`` passed through ``onnxruntime.transformers.optimizer`` (BERT fusions: one Attention op per
  layer, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization);
- ``int8-tensor``: ``onnxruntime.quantization.quantize_dynamic`` of ``fused`` (int8 weights per output channel,
  activations quantised per tensor at run time). Measured and rejected: min cosine 0.982 to the float32 vectors;
- ``int8-row``: our rewrite of ``fused`` (:func:`quantize_rows`): every weight product (each MatMul on a constant
  weight, and the Q|K|V projection of each Attention op, which becomes a MultiHeadAttention on the projected
  values) becomes a MatMulInteger on int8 weights (per output channel) and activations quantised per row (per
  token) at run time, symmetric, both stored as uint8 with zero point 128. Per-token scales keep the few tokens
  with very large activations from setting one coarse scale for the whole batch: min cosine 0.996 on the
  benchmark texts where the per-tensor scheme gives 0.982 (torch simulation: the same). uint8 x uint8 because the
  AVX2 uint8 x int8 kernel saturates its 16-bit sums (wrong results with full-range activations).
- ``int8-row7``: the same rewrite applied to ``fp32`` (not ``fused``: separate Q, K, V products around
  onnxruntime's own attention, LayerNormalization and Gelu ran 12% faster here than the fused ops around int8
  products; SkipLayerNormalization alone took 12% of the int8 run time) with the weights of every product that
  does not narrow (Q, K, V, attention output, FFN up) in [-64, 64] (7 bits per output channel) stored as int8: a
  uint8 activation times such a weight, summed in pairs, stays under 2**15 (255 x 64 x 2 = 32,640), so
  MatMulInteger runs in MLAS' fast AVX2 uint8 x int8 kernel without saturating (``reduce_range`` in onnxruntime's
  quantiser is the same idea); the FFN down-projection keeps ``int8-row``'s 8-bit weights (:func:`_widening`).
  Measured in docs/CHECKS.md (B4).

Files live in ``<cache>/<model id>/<variant>.onnx`` (cache: ``$REFINERY_ONNX_CACHE``, else
``$XDG_CACHE_HOME/refinery/onnx``, else ``~/.cache/refinery/onnx``), each with a ``<variant>.json`` stamp holding
its SHA-256, size, :data:`RECIPE_VERSION` and the torch / onnxruntime versions that made it. A file is written
atomically (temporary file, fsync, rename) and verified against its stamp when loaded: a damaged, truncated or
stale file is built again. Callers also compare the session's output with torch on probe texts before use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from schemas.atomic import write_bytes_atomic, write_text_atomic
from schemas.ids import sha256_bytes, sha256_file

#: Bump when export or rewriting changes the produced graphs (stale files are then built again).
RECIPE_VERSION = 1
VARIANTS = ("fp32", "fused", "int8-tensor", "int8-row", "int8-row7")
#: Variants whose vectors differ from float32 ones beyond float16 storage precision (part of the cache key).
QUANTIZED = frozenset({"int8-tensor", "int8-row", "int8-row7"})
#: The variant used when none is configured: ``int8-row7``, the fastest one whose minimum cosine to the float32
#: vectors is >= 0.99 (the bar of B4); the checks' flags agree with float32 ones except at their thresholds
#: (docs/CHECKS.md). ``REFINERY_EMBED_ONNX=fp32`` gives torch's vectors to 1e-6.
DEFAULT_VARIANT = "int8-row7"
OPSET = 17
_PARENT = {"fused": "fp32", "int8-tensor": "fused", "int8-row": "fused", "int8-row7": "fp32"}


class OnnxUnavailable(RuntimeError):
    """onnxruntime (or onnx) is missing, or the model could not be exported or loaded."""


def available() -> bool:
    """True when onnxruntime and onnx can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def cache_root() -> Path:
    """Where exported models are kept (see the module docstring)."""
    explicit = os.environ.get("REFINERY_ONNX_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "refinery" / "onnx"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter warnings and the quantiser's root-logger advice for the duration."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch

    return {"torch": str(torch.__version__), "onnxruntime": str(onnxruntime.__version__)}


class ModelStore:
    """The exported files of one model: built on first use, verified on every load."""

    def __init__(self, folder: Path, transformer: Any) -> None:
        self.folder = folder
        self.transformer = transformer
        self.rebuilt: list[str] = []  # variants built (or rebuilt) by this object, for logs and tests

    def _stamp(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def verified(self, name: str) -> Path | None:
        """The file of ``name`` when it exists and matches its stamp (hash, size, versions), else None."""
        path = self.folder / f"{name}.onnx"
        try:
            stamp = json.loads(self._stamp(name).read_text())
        except (OSError, ValueError):
            return None
        expected = {"recipe": RECIPE_VERSION, **_versions()}
        if any(stamp.get(k) != v for k, v in expected.items()):
            return None
        try:
            if path.stat().st_size != stamp.get("bytes") or sha256_file(path) != stamp.get("sha256"):
                return None
        except OSError:
            return None
        return path

    def path(self, name: str) -> Path:
        """The verified file of ``name``, built (with its parents) when missing, damaged or stale."""
        found = self.verified(name)
        if found is not None:
            return found
        parent = self.path(_PARENT[name]) if name in _PARENT else None
        with _quiet():
            data = self._build(name, parent)
        target = self.folder / f"{name}.onnx"
        write_bytes_atomic(target, data)
        stamp = {"sha256": sha256_bytes(data), "bytes": len(data), "recipe": RECIPE_VERSION, **_versions()}
        write_text_atomic(self._stamp(name), json.dumps(stamp, sort_keys=True) + "\n")
        self.rebuilt.append(name)
        return target

    def _build(self, name: str, parent: Path | None) -> bytes:
        if name == "fp32":
            return export_transformer(self.transformer)
        assert parent is not None
        config = self.transformer.config
        heads, hidden = int(config.num_attention_heads), int(config.hidden_size)
        if name == "fused":
            return fuse(parent, heads, hidden)
        if name == "int8-tensor":
            return quantize_tensor(parent)
        if name in ("int8-row", "int8-row7"):
            import onnx

            seven_bit = _widening if name == "int8-row7" else None
            return quantize_rows(onnx.load(str(parent)), seven_bit).SerializeToString()
        raise OnnxUnavailable(f"unknown ONNX variant {name!r} (one of {', '.join(VARIANTS)})")


def _widening(k_dim: int, n_dim: int) -> bool:
    """``int8-row7``'s rule: 7-bit weights for products that do not narrow (Q, K, V, attention output, FFN up);
    the narrowing FFN down-projection, whose input (the GELU output) carries BERT's largest activations, keeps
    8-bit weights: min cosine on a 256-token repetitive text 0.987 -> 0.996, for 9% of the speed."""
    return k_dim <= n_dim


def export_transformer(transformer: Any) -> bytes:
    """The ONNX bytes of ``transformer`` (a Hugging Face encoder): ids, mask -> last_hidden_state.

    Exported with eager attention (the pattern the BERT fusions recognise; same numbers as SDPA) and the legacy
    TorchScript exporter (one self-contained file, seconds instead of the dynamo exporter's tens of seconds).
    """
    import torch

    class _Wrapper(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    config = transformer.config
    before = getattr(config, "_attn_implementation", None)
    setter = getattr(transformer, "set_attn_implementation", None)
    ids = torch.ones((2, 8), dtype=torch.long)
    axes = {"batch": 0, "sequence": 1}
    dynamic = {name: {v: k for k, v in axes.items()} for name in ("input_ids", "attention_mask", "last_hidden_state")}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.onnx"
        try:
            if callable(setter) and before not in (None, "eager"):
                setter("eager")
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(
                    _Wrapper(transformer).eval(),
                    (ids, torch.ones_like(ids)),
                    str(out),
                    input_names=["input_ids", "attention_mask"],
                    output_names=["last_hidden_state"],
                    dynamic_axes=dynamic,
                    opset_version=OPSET,
                    dynamo=False,
                )
        except Exception as exc:
            raise OnnxUnavailable(f"ONNX export failed: {exc}") from exc
        finally:
            if callable(setter) and before not in (None, "eager"):
                setter(before)
        return out.read_bytes()


def fuse(source: Path, heads: int, hidden: int) -> bytes:
    """``source`` through onnxruntime's transformer optimiser (BERT fusions)."""
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:  # pragma: no cover - shipped in the onnxruntime wheel
        raise OnnxUnavailable(f"onnxruntime.transformers is not available: {exc}") from exc
    optimized = optimize_model(
        str(source), model_type="bert", num_heads=heads, hidden_size=hidden, optimization_options=FusionOptions("bert")
    )
    return bytes(optimized.model.SerializeToString())


def quantize_tensor(source: Path) -> bytes:
    """onnxruntime's dynamic quantisation of ``source`` (per-channel int8 weights, per-tensor activations)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.onnx"
        quantize_dynamic(
            str(source),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Attention"],
            extra_options={"DefaultTensorType": 1},  # float: shapes of fused ops are not inferred
        )
        return out.read_bytes()


def quantize_rows(model: Any, seven_bit: Callable[[int, int], bool] | None = None) -> Any:
    """``model`` with its weight products replaced by row-wise int8 MatMulIntegers (modified and returned).

    ``seven_bit(K, N)``: True for the products whose weights are stored as int8 in [-64, 64] with zero point 0
    (``int8-row7``) instead of uint8 with zero point 128 (``int8-row``, and every product when None); the arithmetic
    is otherwise the same.

    For ``y = x @ W`` (x: [..., K], W: [K, N]): W is stored as uint8 ``round(W / s_w) + 128`` with ``s_w`` the
    per-column max |W| / 127; at run time each row r of x (one token) gets ``s_r = max|x_r| / 127`` and is
    quantised by QuantizeLinear (per-axis scale, zero point 128); MatMulInteger (both zero points 128) gives the
    exact int32 products; DequantizeLinear (per-row scale) and a Mul by ``s_w`` give y. Every MatMul on a
    constant 2-D float weight is rewritten so; a fused Attention node (num_heads only) becomes the same product
    with its packed Q|K|V weight, a Split and a MultiHeadAttention (bias and key padding mask as before).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    added: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        added.append(numpy_helper.from_array(value, name))
        return name

    eps = const("rowq_eps", np.array(1e-8, np.float32))
    q_max = const("rowq_127", np.array(127.0, np.float32))
    zero_f = const("rowq_zero", np.array(0.0, np.float32))
    mid = const("rowq_128", np.array(128, np.uint8))
    zero_s8 = const("rowq_zero_s8", np.array(0, np.int8))
    first = const("rowq_first", np.array([0], np.int64))
    last = const("rowq_last", np.array([-1], np.int64))

    def row_matmul(x: str, w: np.ndarray, y: str, p: str) -> list[Any]:
        k_dim, n_dim = w.shape
        if seven_bit is not None and seven_bit(k_dim, n_dim):  # uint8 x int8 pairs sum below 2**15
            scale_w = np.maximum(np.abs(w).max(axis=0), 1e-12) / 64.0
            w_q = np.clip(np.rint(w / scale_w), -64, 64).astype(np.int8)
            w_zero = zero_s8
        else:
            scale_w = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
            w_q = (np.clip(np.rint(w / scale_w), -127, 127).astype(np.int16) + 128).astype(np.uint8)
            w_zero = mid
        w_name = const(p + "w", w_q)
        sw_name = const(p + "sw", scale_w.astype(np.float32))
        rows_shape = const(p + "rows", np.array([-1, k_dim], np.int64))
        width = const(p + "n", np.array([n_dim], np.int64))
        return [
            helper.make_node("Reshape", [x, rows_shape], [p + "x2"]),
            helper.make_node("ReduceMax", [p + "x2"], [p + "max"], axes=[1], keepdims=0),
            helper.make_node("ReduceMin", [p + "x2"], [p + "min"], axes=[1], keepdims=0),
            helper.make_node("Neg", [p + "min"], [p + "negmin"]),
            helper.make_node("Max", [p + "max", p + "negmin"], [p + "absmax"]),
            helper.make_node("Div", [p + "absmax", q_max], [p + "s0"]),
            helper.make_node("Max", [p + "s0", eps], [p + "s"]),
            # a uint8 zero point of 128 per row, shaped like the scale (QuantizeLinear wants both per axis)
            helper.make_node("Mul", [p + "s", zero_f], [p + "z0"]),
            helper.make_node("Cast", [p + "z0"], [p + "z1"], to=TensorProto.UINT8),
            helper.make_node("Add", [p + "z1", mid], [p + "z"]),
            helper.make_node("QuantizeLinear", [p + "x2", p + "s", p + "z"], [p + "q"], axis=0),
            helper.make_node("MatMulInteger", [p + "q", w_name, mid, w_zero], [p + "y32"]),
            helper.make_node("DequantizeLinear", [p + "y32", p + "s"], [p + "yr"], axis=0),
            helper.make_node("Mul", [p + "yr", sw_name], [p + "y2"]),
            helper.make_node("Shape", [x], [p + "xshape"]),
            helper.make_node("Slice", [p + "xshape", first, last], [p + "lead"]),
            helper.make_node("Concat", [p + "lead", width], [p + "yshape"], axis=0),
            helper.make_node("Reshape", [p + "y2", p + "yshape"], [y]),
        ]

    def constant(name: str) -> np.ndarray | None:
        init = weights.get(name)
        if init is None or init.data_type != TensorProto.FLOAT:
            return None
        return np.asarray(numpy_helper.to_array(init), dtype=np.float32)

    nodes: list[Any] = []
    count = 0
    for node in graph.node:
        p = f"rowq{count}_"
        if node.op_type == "MatMul" and len(node.input) == 2:
            w = constant(node.input[1])
            if w is not None and w.ndim == 2:
                nodes += row_matmul(node.input[0], w, node.output[0], p)
                count += 1
                continue
        if node.op_type == "Attention" and node.domain == "com.microsoft" and len(node.input) in (3, 4):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            w = constant(node.input[1])
            bias = constant(node.input[2])
            if set(attrs) == {"num_heads"} and w is not None and bias is not None and w.ndim == 2:
                heads = int(attrs["num_heads"])
                hidden = w.shape[1] // 3
                sizes = const(p + "sizes", np.array([hidden, hidden, hidden], np.int64))
                bias_name = const(p + "bias", bias)
                mask = node.input[3] if len(node.input) == 4 else ""
                nodes += row_matmul(node.input[0], w, p + "qkv", p)
                nodes += [
                    helper.make_node("Split", [p + "qkv", sizes], [p + t for t in ("q_", "k_", "v_")], axis=-1),
                    helper.make_node(
                        "MultiHeadAttention",
                        [p + "q_", p + "k_", p + "v_", bias_name, mask],
                        [node.output[0]],
                        domain="com.microsoft",
                        num_heads=heads,
                    ),
                ]
                count += 1
                continue
        nodes.append(node)
    if count == 0:
        raise OnnxUnavailable("no MatMul or Attention with a constant weight to quantise")
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


class OnnxTransformer:
    """An onnxruntime session over one stored variant of a model's transformer."""

    def __init__(self, store: ModelStore, variant: str, threads: int) -> None:
        if variant not in VARIANTS:
            raise OnnxUnavailable(f"unknown ONNX variant {variant!r} (one of {', '.join(VARIANTS)})")
        import onnxruntime as ort

        self.variant = variant
        self.path = store.path(variant)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared machines: no busy wait
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise OnnxUnavailable(f"onnxruntime cannot load {self.path}: {exc}") from exc
        self._inputs = {i.name for i in self.session.get_inputs()}

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """last_hidden_state (rows x width x d, float32) of int64 ``input_ids`` under ``attention_mask``."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return np.asarray(self.session.run(["last_hidden_state"], feeds)[0], dtype=np.float32)
