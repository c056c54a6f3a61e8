"""Sentence embeddings for the checks that compare meaning, cached per workspace (docs/EMBEDDINGS.md).

``model`` (which model, its id), ``encoder`` (batching, onnxruntime or torch), ``cache`` (the shard cache,
``embed_texts``, ``record_embeddings``), ``onnx_encoder`` (the exported transformer and its variants).
"""
