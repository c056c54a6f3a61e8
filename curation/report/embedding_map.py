"""The report's map: a sample of the scanned records' prompt embeddings projected on their first two principal
components and coloured by the check that flagged them. Embeddings come from the workspace cache; a record
without one is left off the map (and the map's note says how many), never embedded unless asked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.catalog import Catalog

#: Most points drawn on the embedding map.
MAX_POINTS = 5000

#: A function returning prompt embeddings for record ids: an (n, d) array aligned with the ids, or a mapping
#: record id -> vector (ids without a vector are left off the map).
EmbeddingSource = Callable[[list[str]], "np.ndarray | Mapping[str, Any]"]


@dataclass
class EmbeddingMap:
    x: np.ndarray
    y: np.ndarray
    categories: list[str]  # per point: "not flagged", a check name or "several checks"
    explained: tuple[float, float]  # share of the variance along each axis
    total: int  # records in the scan (points drawn <= total)


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Project ``vectors`` (n, d) onto their first two principal components (SVD of the centred matrix).

    Returns the (n, 2) coordinates and the share of the total variance along each axis. Signs are fixed so
    the largest loading of each component is positive (the same data always gives the same picture). Fewer
    than two dimensions or points give zeros for the missing axis.
    """
    matrix = np.asarray(vectors, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {matrix.shape}")
    n = matrix.shape[0]
    out = np.zeros((n, 2))
    if n == 0:
        return out, (0.0, 0.0)
    centred = matrix - matrix.mean(axis=0, keepdims=True)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(2, vt.shape[0])
    for i in range(k):
        component = vt[i]
        if component[np.argmax(np.abs(component))] < 0:
            component = -component
        out[:, i] = centred @ component
    variance = singular**2
    total = float(variance.sum())
    shares = [float(variance[i] / total) if total > 0 and i < len(variance) else 0.0 for i in range(2)]
    return out, (shares[0], shares[1])


def sample_ids(ids: Sequence[str], limit: int, seed: int = 0) -> list[str]:
    """At most ``limit`` of ``ids``, drawn uniformly with a fixed seed (same input, same sample), in input order."""
    if len(ids) <= limit:
        return list(ids)
    chosen = np.random.default_rng(seed).choice(len(ids), size=limit, replace=False)
    return [ids[i] for i in sorted(chosen.tolist())]


def _default_embeddings(catalog: Catalog, compute_missing: bool) -> EmbeddingSource:
    """Prompt embeddings from :mod:`curation.embeddings.cache` (the cache the embedding checks fill)."""
    from curation.embeddings.cache import record_embeddings

    def source(ids: list[str]) -> Any:
        return record_embeddings(catalog, ids, field="prompt", compute_missing=compute_missing)

    return source


def _vectors(found: Any, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Align what an embedding source returned with ``ids``: rows of an array, or a mapping id -> vector."""
    if isinstance(found, Mapping):
        kept = [i for i in ids if found.get(i) is not None]
        if not kept:
            return np.zeros((0, 0)), []
        return np.vstack([np.asarray(found[i], dtype=np.float64) for i in kept]), kept
    matrix = np.asarray(found, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise ValueError(f"expected {len(ids)} vectors, got an array of shape {matrix.shape}")
    # a vector with NaN or inf cannot be placed; an all-zero row is a record without a stored embedding
    rows = np.flatnonzero(np.isfinite(matrix).all(axis=1) & np.any(matrix != 0, axis=1))
    return matrix[rows], [ids[int(i)] for i in rows]


def build_embedding_map(
    catalog: Catalog,
    scan_id: str,
    source: EmbeddingSource | None,
    compute_missing: bool,
    max_points: int,
) -> tuple[EmbeddingMap | None, str]:
    rows = catalog.query(
        "SELECT record_id, list(check_name ORDER BY check_name) FILTER (WHERE flagged) AS flags "
        "FROM findings WHERE scan_id = ? GROUP BY record_id ORDER BY record_id",
        [scan_id],
    )
    if not rows:
        return None, "The scan stored no findings, so there are no records to place on a map."
    flags = {r["record_id"]: r["flags"] or [] for r in rows}
    ids = sample_ids(list(flags), max_points)
    try:
        if source is None:
            source = _default_embeddings(catalog, compute_missing)
        matrix, kept = _vectors(source(ids), ids)
    except ImportError as exc:
        return None, f"Embeddings are unavailable: {exc} (install the embed extra: pip install 'refinery[embed]')."
    except Exception as exc:  # the map is one section: say why it is missing instead of failing the report
        return None, f"Embeddings are unavailable: {exc.__class__.__name__}: {' '.join(str(exc).split())}"
    if len(kept) < 3:
        hint = "" if compute_missing else " Run a scan with an embedding check, or pass --compute-embeddings."
        return None, f"Only {len(kept)} of {len(ids)} sampled records have a stored prompt embedding.{hint}"
    coords, explained = pca_2d(matrix)
    categories = []
    for rid in kept:
        checks = flags[rid]
        categories.append("not flagged" if not checks else checks[0] if len(checks) == 1 else "several checks")
    note = f"{len(kept):,} of {len(flags):,} scanned records"
    if len(kept) < len(ids):
        note += f" ({len(ids) - len(kept):,} sampled records had no stored embedding)"
    return EmbeddingMap(coords[:, 0], coords[:, 1], categories, explained, len(flags)), note
