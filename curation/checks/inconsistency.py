"""The ``inconsistency`` check: near-identical prompts whose answers disagree (both records are flagged)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from curation.checks.neighbours import (
    EMBEDDING_NEEDS,
    EmbeddingCheckConfig,
    field_vectors,
    label_of,
    last_paragraph,
    neighbours,
    tail_similarities,
)
from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, PairFinding, ScanRecord
from curation.similarity.exact import dedup_key, rank_key
from curation.similarity.minhash_store import signatures_for
from curation.similarity.near_dup import NearDupConfig, find_near_duplicates


class InconsistencyConfig(EmbeddingCheckConfig):
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


def _candidate_pairs(
    records: Sequence[ScanRecord], ctx: CheckContext, config: InconsistencyConfig, prompt_vectors: np.ndarray
) -> dict[tuple[int, int], str]:
    """Pairs (i < j) of matching prompts -> how they matched ('embedding', 'exact', 'minhash')."""
    active = [bool(r.prompt.strip()) for r in records]
    found = neighbours(records, "prompt", ctx, config.model, config.k)
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
    tail_sim = tail_similarities(records, candidates, ctx, config.model)
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


SPEC = CheckSpec(
    "inconsistency",
    check_inconsistency,
    higher_score="the prompts match more closely and the answers disagree more (prompt cosine x disagreement)",
    config=InconsistencyConfig,
    default=True,
    blocks_snapshot=True,
    guide="similar prompt, conflicting answer compared with the other record. Keep the correct one, edit "
    "or reject the other.",
    needs=EMBEDDING_NEEDS,
)
