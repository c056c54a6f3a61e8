"""The ``semantic_dup`` check: paraphrased records (prompt and response both close in embedding space)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from curation.checks.neighbours import (
    EMBEDDING_NEEDS,
    EmbeddingCheckConfig,
    field_vectors,
    neighbours,
    tail_similarities,
)
from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, PairFinding, ScanRecord
from curation.similarity.exact import DuplicateCluster, rank_key
from curation.similarity.union_find import ArrayUnionFind


class SemanticDupConfig(EmbeddingCheckConfig):
    """``semantic_dup``: paraphrased records (prompt and response both close in embedding space)."""

    threshold: float = Field(0.95, gt=0.0, le=1.0, description="Minimum of prompt and response cosine.")


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
    found = neighbours(records, "prompt", ctx, config.model, config.k)
    active = [bool(r.prompt.strip()) for r in records]
    candidates: dict[tuple[int, int], str] = {}
    rows, cols = np.nonzero(found.similarities >= config.threshold)
    for i, c in zip(rows.tolist(), cols.tolist(), strict=True):
        j = int(found.indices[i, c])
        if j >= 0 and active[i] and active[j]:
            candidates[(min(i, j), max(i, j))] = "embedding"
    by_response = {key: float(np.clip(responses[key[0]] @ responses[key[1]], 0.0, 1.0)) for key in candidates}
    candidates = {key: how for key, how in candidates.items() if by_response[key] >= config.threshold}
    tail_sim = tail_similarities(records, candidates, ctx, config.model)
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


SPEC = CheckSpec(
    "semantic_dup",
    check_semantic_dup,
    higher_score="a closer paraphrase of another record (the smaller of prompt and response cosine)",
    config=SemanticDupConfig,
    default=True,
    groups_splits=True,
    needs=EMBEDDING_NEEDS,
)
