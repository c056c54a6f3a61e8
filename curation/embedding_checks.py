"""Embedding-based scan checks: ``outlier``, ``inconsistency`` and ``semantic_dup``.

All three embed the records' prompts (and responses) with :mod:`curation.embeddings.cache` (cached in the workspace)
and search exact nearest neighbours with :mod:`curation.similarity.knn`. Neighbour lists are shared between the checks
of one scan (memoised on the model, field, record ids and k), so running all three costs one embedding pass per
field and one kNN per field. Thresholds are cosine similarities of all-MiniLM-L6-v2; the figures behind each
default are in docs/CHECKS.md (measured on banking77, self_instruct and sharegpt).
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.check_types import CheckContext, CheckOutput, Finding, PairFinding, ScanRecord
from curation.embeddings.cache import EmbedStats, embed_texts, embeddings_dir
from curation.embeddings.model import model_id
from curation.similarity.exact import DuplicateCluster, dedup_key, rank_key
from curation.similarity.knn import Neighbours, knn
from curation.similarity.minhash_store import signatures_for
from curation.similarity.near_dup import NearDupConfig, find_near_duplicates
from curation.similarity.union_find import ArrayUnionFind

OUTLIER = "outlier"
INCONSISTENCY = "inconsistency"
SEMANTIC_DUP = "semantic_dup"


class _EmbeddingCheckConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, description="Sentence-transformers model folder; None = all-MiniLM-L6-v2.")
    k: int = Field(10, ge=1, le=1000, description="Nearest neighbours searched per record.")


class OutlierConfig(_EmbeddingCheckConfig):
    """``outlier``: records far from their k nearest neighbours (within their label, where records carry one)."""

    field: str = Field("prompt", pattern="^(prompt|response)$", description="Text embedded: prompt or response.")
    by_label: bool = Field(True, description="Compare records with records of the same label, where labelled.")
    z_threshold: float = Field(
        5.0, gt=0.0, description="Flag at this robust z-score of the mean kNN cosine distance (score 0.5)."
    )
    min_group: int = Field(
        20, ge=2, description="Groups (labels) smaller than this are scored against all small groups pooled."
    )


class InconsistencyConfig(_EmbeddingCheckConfig):
    """``inconsistency``: near-identical prompts whose answers disagree."""

    prompt_threshold: float = Field(0.95, gt=0.0, le=1.0, description="Prompt cosine from which two prompts match.")
    response_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Free-text answers below this response cosine disagree."
    )
    minhash_threshold: float | None = Field(
        0.8, gt=0.0, le=1.0, description="Also match prompts at this MinHash Jaccard (None: embeddings only)."
    )
    max_label_words: int = Field(
        4, ge=1, description="Without a record label, a single-line response of at most this many words is a label."
    )


class SemanticDupConfig(_EmbeddingCheckConfig):
    """``semantic_dup``: paraphrased records (prompt and response both close in embedding space)."""

    threshold: float = Field(0.95, gt=0.0, le=1.0, description="Minimum of prompt and response cosine.")


# -- shared embedding + neighbour computation ------------------------------------------------------------------

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
        return embed_texts(texts, model, cache, field, stats=stats), stats[0]

    key = ("vec", model_id(model), field, _ids_hash(records), str(ctx.catalog.path if ctx.catalog else ""))
    if key in _MEMO:  # computed earlier in this process (another check of the same scan): nothing embedded now
        return _MEMO[key][0], EmbedStats(len(records), len(records), 0)
    result: tuple[np.ndarray, EmbedStats] = _memo(key, make)
    return result


def _neighbours(records: Sequence[ScanRecord], field: str, ctx: CheckContext, model: str | None, k: int) -> Neighbours:
    vectors, _ = field_vectors(records, field, ctx, model)
    key = ("knn", model_id(model), field, _ids_hash(records), str(k))
    result: Neighbours = _memo(key, lambda: knn(vectors, k=k))
    return result


# -- outlier ---------------------------------------------------------------------------------------------------


def check_outlier(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    """Score = z / (z + z_threshold) for robust z > 0 (0.5 at the threshold, towards 1 far beyond), else 0.

    z = (d - median) / (1.4826 MAD) of d = 1 - mean cosine to the k nearest neighbours, where neighbours and
    the median/MAD come from the record's label group (labels present on at least half the records and
    ``by_label``), or from all records. Groups under ``min_group`` records take median/MAD from all such groups
    pooled. Default threshold z >= 5: on banking77 (per label, k=10) z >= 3.5 flagged 313 of 9,999 records,
    5.0 flags 127 and 6.0 77; by hand about 8 of the 14 highest are real defects (an answer pasted as a query,
    garbled text, a query under the wrong intent), the rest unusual but valid queries. A record with no
    neighbour (a single record, or the only one of its label) gets score 0, no flag, and ``details.skipped``.
    """
    config = ctx.config if isinstance(ctx.config, OutlierConfig) else OutlierConfig()
    started = time.monotonic()
    vectors, stats = field_vectors(records, config.field, ctx, config.model)
    labelled = sum(r.label is not None for r in records)
    by_label = config.by_label and labelled * 2 >= len(records) and labelled > 0
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        groups[rec.label if by_label else None].append(i)
    distance = np.full(len(records), np.nan)
    neighbour_of: dict[int, tuple[int, float]] = {}
    for members in groups.values():
        idx = np.array(members)
        k = min(config.k, len(members) - 1)
        if k < 1:
            continue
        if len(members) == len(records):
            found = _neighbours(records, config.field, ctx, config.model, config.k)
            sims, nbr = found.similarities[:, :k], found.indices[:, :k]
        else:
            found = knn(vectors[idx], k=k, show_progress=False)
            sims, nbr = found.similarities, idx[found.indices]
        distance[idx] = 1.0 - sims.mean(axis=1)
        for row, i in enumerate(members):
            neighbour_of[i] = (int(nbr[row, 0]), float(sims[row, 0]))
    z = np.zeros(len(records))
    small = [i for members in groups.values() if len(members) < config.min_group for i in members]
    for members in [m for m in groups.values() if len(m) >= config.min_group] + [small]:
        d = distance[members]
        ok = ~np.isnan(d)
        if ok.sum() < 2:
            continue
        median = float(np.median(d[ok]))
        mad = max(1.4826 * float(np.median(np.abs(d[ok] - median))), 1e-6)
        z[np.array(members)[ok]] = (d[ok] - median) / mad
    findings = []
    for i, rec in enumerate(records):
        group = rec.label if by_label else None
        if np.isnan(distance[i]):
            why = f"no other record with label {group!r}" if by_label else "fewer than two records"
            findings.append(Finding(rec.record_id, 0.0, False, None, {"skipped": why}))
            continue
        zi = float(z[i])
        score = zi / (zi + config.z_threshold) if zi > 0 else 0.0
        nearest_index, sim = neighbour_of[i]
        details = {
            "distance": round(float(distance[i]), 6),
            "robust_z": round(zi, 3),
            "group": group,
            "nearest_record_id": records[nearest_index].record_id,
            "nearest_similarity": round(sim, 6),
        }
        flagged = zi >= config.z_threshold
        reason = None
        if flagged:
            where = f"within label {group!r}" if by_label else "among all records"
            reason = f"{config.field} far from its {config.k} nearest neighbours {where} (robust z {zi:.1f})"
        findings.append(Finding(rec.record_id, round(score, 6), flagged, reason, details))
    summary = {
        "field": config.field,
        "by_label": by_label,
        "groups": len(groups),
        "embedded": stats.encoded,
        "embeddings_cached": stats.cached,
        "seconds": round(time.monotonic() - started, 3),
    }
    return CheckOutput(findings, summary=summary)


# -- inconsistency ---------------------------------------------------------------------------------------------


def label_of(record: ScanRecord, max_words: int) -> str | None:
    """The record's label, else its response when that is a short single line (classification-style data)."""
    if record.label is not None and record.label.strip():
        return record.label.strip()
    response = record.response.strip()
    if response and "\n" not in response and len(response.split()) <= max_words:
        return dedup_key(response)
    return None


def _candidate_pairs(
    records: Sequence[ScanRecord], ctx: CheckContext, config: InconsistencyConfig, prompt_vectors: np.ndarray
) -> dict[tuple[int, int], str]:
    """Pairs (i < j) of matching prompts -> how they matched ('embedding', 'exact', 'minhash')."""
    active = [bool(r.prompt.strip()) for r in records]
    found = _neighbours(records, "prompt", ctx, config.model, config.k)
    pairs: dict[tuple[int, int], str] = {}
    rows, cols = np.nonzero(found.similarities >= config.prompt_threshold)
    for i, c in zip(rows.tolist(), cols.tolist(), strict=True):
        j = int(found.indices[i, c])
        if j >= 0 and active[i] and active[j]:
            pairs.setdefault((min(i, j), max(i, j)), "embedding")
    exact: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        if active[i]:
            exact[dedup_key(rec.prompt)].append(i)
    for members in exact.values():
        keeper = min(members, key=lambda i: rank_key(records[i].rank))
        for other in members:
            if other != keeper:
                pairs[(min(keeper, other), max(keeper, other))] = "exact"
    if config.minhash_threshold is not None:
        index_of = {r.record_id: i for i, r in enumerate(records)}
        mh = NearDupConfig(threshold=config.minhash_threshold, scope="prompt")
        ids = [r.record_id for r in records]
        # the last paragraph: a template's shared text would put every prompt in one LSH bucket (measured on
        # banking77 with the intent template: minutes of candidate verification for 10k records)
        texts = [last_paragraph(r.prompt) for r in records]
        sketches = signatures_for(ctx.catalog, ids, texts, mh.minhash_params(), "prompt_tail").sketches
        result = find_near_duplicates(ids, texts, {r.record_id: r.rank for r in records}, mh, sketches)
        for a, b, _ in result.pairs:
            i, j = index_of[a], index_of[b]
            if active[i] and active[j]:
                pairs.setdefault((min(i, j), max(i, j)), "minhash")
    return pairs


def last_paragraph(text: str) -> str:
    """The text after the last blank line: the final turn of a multi-turn prompt, the filled-in slot of a template."""
    return text.strip().rsplit("\n\n", 1)[-1].strip()


def _tail_similarities(
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


def check_inconsistency(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    """Pairs of matching prompts whose answers disagree; both records of a pair are flagged.

    Prompts match at cosine >= ``prompt_threshold`` (among each record's k nearest), at equal normalised text,
    or at MinHash Jaccard >= ``minhash_threshold`` of the prompts' last paragraphs. Where a prompt has several
    paragraphs (a multi-turn history, a template), the last paragraphs must also match at ``prompt_threshold``
    and the prompt similarity reported is the smaller of the two cosines (measured on sharegpt: without this,
    4 of 4 flagged pairs shared a history and differed in the final turn, "Goodbye" vs "Have a nice day!").

    Answers disagree when both records have a label (the record's label, or a response of at most
    ``max_label_words`` words on one line) and the labels differ, or otherwise when the response cosine is below
    ``response_threshold``. Pair score = prompt cosine x disagreement (1 for different labels, 1 - response cosine
    for free text), clipped to [0, 1]; a record's score is its worst pair's. ``record_a``
    of a pair is the record that ranks lower for keeping (later ingested), ``record_b`` the other.
    Records with an empty prompt take no part (``details.skipped``).
    """
    config = ctx.config if isinstance(ctx.config, InconsistencyConfig) else InconsistencyConfig()
    started = time.monotonic()
    prompts, prompt_stats = field_vectors(records, "prompt", ctx, config.model)
    responses, response_stats = field_vectors(records, "response", ctx, config.model)
    candidates = _candidate_pairs(records, ctx, config, prompts)
    tail_sim = _tail_similarities(records, candidates, ctx, config.model)
    labels = [label_of(r, config.max_label_words) for r in records]
    pairs: list[PairFinding] = []
    worst: dict[int, PairFinding] = {}
    conflicts_of: dict[int, int] = defaultdict(int)
    for (i, j), how in sorted(candidates.items()):
        prompt_sim = float(np.clip(prompts[i] @ prompts[j], 0.0, 1.0))
        if (i, j) in tail_sim and how != "exact":
            prompt_sim = min(prompt_sim, tail_sim[(i, j)])
            if prompt_sim < config.prompt_threshold:
                continue  # a shared history (or template) with a different final question
        response_sim = float(np.clip(responses[i] @ responses[j], -1.0, 1.0))
        a, b = sorted((i, j), key=lambda x: rank_key(records[x].rank), reverse=True)
        if labels[i] is not None and labels[j] is not None:
            if labels[i] == labels[j]:
                continue
            disagreement = 1.0
            what = f"label {labels[a]!r} vs {labels[b]!r}"
        else:
            if response_sim >= config.response_threshold:
                continue
            disagreement = 1.0 - max(response_sim, 0.0)
            what = f"response cosine {response_sim:.2f}"
        score = float(np.clip(prompt_sim * disagreement, 0.0, 1.0))
        ra, rb = records[a].record_id, records[b].record_id
        pair = PairFinding(
            ra,
            rb,
            round(score, 6),
            round(prompt_sim, 6),
            round(response_sim, 6),
            f"{ra} and {rb}: matching prompts ({how}, cosine {prompt_sim:.3f}) with different answers ({what})",
            {"matched_by": how, "label_a": labels[a], "label_b": labels[b]},
        )
        pairs.append(pair)
        for me in (a, b):
            conflicts_of[me] += 1
            if me not in worst or pair.score > worst[me].score:
                worst[me] = pair
    findings = []
    for i, rec in enumerate(records):
        if not rec.prompt.strip():
            findings.append(Finding(rec.record_id, 0.0, False, None, {"skipped": "empty prompt"}))
            continue
        pair_found = worst.get(i)
        if pair_found is None:
            findings.append(Finding(rec.record_id, 0.0, False))
            continue
        other = pair_found.record_b if pair_found.record_a == rec.record_id else pair_found.record_a
        reason = f"conflicts with {other}" + (f" and {conflicts_of[i] - 1} more" if conflicts_of[i] > 1 else "")
        reason += f": {pair_found.reason.split(': ', 1)[1] if pair_found.reason else ''}"
        details = {"other_record_id": other, "conflicts": conflicts_of[i]}
        findings.append(Finding(rec.record_id, pair_found.score, True, reason, details))
    summary = {
        "candidate_pairs": len(candidates),
        "conflict_pairs": len(pairs),
        "embedded": prompt_stats.encoded + response_stats.encoded,
        "embeddings_cached": prompt_stats.cached + response_stats.cached,
        "seconds": round(time.monotonic() - started, 3),
    }
    return CheckOutput(findings, summary=summary, pairs=pairs)


# -- semantic_dup ----------------------------------------------------------------------------------------------


def check_semantic_dup(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    """Paraphrase duplicates: pair similarity = min(prompt cosine, response cosine) >= ``threshold``.

    As in ``inconsistency``, prompts of several paragraphs must match on their last paragraph too (the prompt
    cosine is the smaller of the two): with the banking77 intent template the whole-prompt cosine alone put
    thousands of unrelated queries of one label above 0.95.

    Candidates are each record's k nearest prompts. Matching pairs are joined into clusters
    (:class:`~curation.similarity.union_find.ArrayUnionFind`); each cluster keeps its best-ranked member and the others
    are flagged with score = their best pair similarity, naming the kept record; every matching pair is a
    :class:`PairFinding` (record_a the lower-ranked one). Records with an empty prompt take no part. Exact copies match
    too (cosine 1): ``exact`` flags those as well.
    """
    config = ctx.config if isinstance(ctx.config, SemanticDupConfig) else SemanticDupConfig()
    started = time.monotonic()
    prompts, prompt_stats = field_vectors(records, "prompt", ctx, config.model)
    responses, response_stats = field_vectors(records, "response", ctx, config.model)
    found = _neighbours(records, "prompt", ctx, config.model, config.k)
    active = [bool(r.prompt.strip()) for r in records]
    candidates: dict[tuple[int, int], str] = {}
    rows, cols = np.nonzero(found.similarities >= config.threshold)
    for i, c in zip(rows.tolist(), cols.tolist(), strict=True):
        j = int(found.indices[i, c])
        if j >= 0 and active[i] and active[j]:
            candidates[(min(i, j), max(i, j))] = "embedding"
    by_response = {key: float(np.clip(responses[key[0]] @ responses[key[1]], 0.0, 1.0)) for key in candidates}
    candidates = {key: how for key, how in candidates.items() if by_response[key] >= config.threshold}
    tail_sim = _tail_similarities(records, candidates, ctx, config.model)
    matched: dict[tuple[int, int], tuple[float, float]] = {}
    for key in candidates:
        p_sim = min(float(np.clip(prompts[key[0]] @ prompts[key[1]], 0.0, 1.0)), tail_sim.get(key, 1.0))
        if min(p_sim, by_response[key]) >= config.threshold:
            matched[key] = (p_sim, by_response[key])
    finder = ArrayUnionFind(len(records))
    best: dict[int, float] = {}
    for (i, j), (p_sim, r_sim) in matched.items():
        for me in (i, j):
            best[me] = max(best.get(me, 0.0), min(p_sim, r_sim))
    pairs_of = np.array(sorted(matched), dtype=np.int64).reshape(-1, 2)
    finder.union(pairs_of[:, 0], pairs_of[:, 1])
    clusters: list[DuplicateCluster] = []
    cluster_of: dict[int, DuplicateCluster] = {}
    for members in finder.groups():
        ordered = sorted(members, key=lambda i: rank_key(records[i].rank))
        keeper, runner_up = ordered[0], ordered[1]
        kept_vec_p, kept_vec_r = prompts[keeper], responses[keeper]
        ids = sorted(records[i].record_id for i in members)
        by_id = {records[i].record_id: i for i in members}
        sims = tuple(
            1.0
            if by_id[rid] == keeper
            else round(float(min(prompts[by_id[rid]] @ kept_vec_p, responses[by_id[rid]] @ kept_vec_r)), 6)
            for rid in ids
        )
        cluster = DuplicateCluster(
            "sd_" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16],
            records[keeper].record_id,
            tuple(ids),
            records[keeper].rank.reason_against(records[runner_up].rank),
            sims,
        )
        clusters.append(cluster)
        for i in members:
            cluster_of[i] = cluster
    pairs = []
    for (i, j), (p_sim, r_sim) in sorted(matched.items()):
        a, b = sorted((i, j), key=lambda x: rank_key(records[x].rank), reverse=True)
        ra, rb = records[a].record_id, records[b].record_id
        sim = min(p_sim, r_sim)
        reason = f"{ra} paraphrases {rb} (prompt cosine {p_sim:.3f}, response cosine {r_sim:.3f})"
        pairs.append(PairFinding(ra, rb, round(sim, 6), round(p_sim, 6), round(r_sim, 6), reason))
    findings = []
    for i, rec in enumerate(records):
        if not active[i]:
            findings.append(Finding(rec.record_id, 0.0, False, None, {"skipped": "empty prompt"}))
            continue
        member_of = cluster_of.get(i)
        if member_of is None:
            nearest = float(found.similarities[i, 0]) if found.indices[i, 0] >= 0 else 0.0
            findings.append(Finding(rec.record_id, 0.0, False, None, {"nearest_prompt_similarity": round(nearest, 6)}))
            continue
        details = {"cluster_id": member_of.cluster_id, "kept_record_id": member_of.kept}
        if member_of.kept == rec.record_id:
            findings.append(Finding(rec.record_id, round(best[i], 6), False, None, details))
            continue
        reason = (
            f"paraphrase of {member_of.kept} (similarity {member_of.similarity_of(rec.record_id):.3f}; "
            f"kept: {member_of.keep_reason})"
        )
        findings.append(Finding(rec.record_id, round(best[i], 6), True, reason, details))
    summary = {
        "clusters": len(clusters),
        "duplicates": sum(len(c.removed) for c in clusters),
        "pairs": len(pairs),
        "embedded": prompt_stats.encoded + response_stats.encoded,
        "embeddings_cached": prompt_stats.cached + response_stats.cached,
        "seconds": round(time.monotonic() - started, 3),
    }
    return CheckOutput(findings, clusters, summary, pairs)


#: Registered in :mod:`curation.scan`.
EMBEDDING_CHECKS = {OUTLIER: check_outlier, INCONSISTENCY: check_inconsistency, SEMANTIC_DUP: check_semantic_dup}
EMBEDDING_CHECK_CONFIGS: dict[str, type[BaseModel]] = {
    OUTLIER: OutlierConfig,
    INCONSISTENCY: InconsistencyConfig,
    SEMANTIC_DUP: SemanticDupConfig,
}
