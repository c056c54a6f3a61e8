"""The ``near_dup`` scan checks: one finding per record, clusters with the kept member and true similarities.

Three registered names, one per scope, because a snapshot policy excludes duplicates by check name and the
scopes mean different things: ``near_dup`` (the whole pair: a removable duplicate), ``near_dup_prompt`` (the
same question asked twice: input for the inconsistency check, not a removal) and ``near_dup_response``. The
``scope`` config key of ``near_dup`` selects one of the other two (see :func:`resolve_scope`), so results never
land under a name that means something else.

Score: the highest exact Jaccard similarity to any other record in a verified pair (0.0 when none). Flag: the
record is a removed (non-kept) member of a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from curation.check_types import CheckContext, CheckOutput, Finding, ScanRecord
from curation.minhash_store import signatures_for
from curation.near_dup import NearDupConfig, Scope, find_near_duplicates

SCOPE_CHECKS: dict[Scope, str] = {"pair": "near_dup", "prompt": "near_dup_prompt", "response": "near_dup_response"}


def resolve_scope(name: str, config: NearDupConfig) -> str:
    """The check name results are stored under: ``near_dup`` with ``scope: prompt`` is ``near_dup_prompt``."""
    if name == "near_dup":
        return SCOPE_CHECKS[config.scope]
    expected = next(scope for scope, check in SCOPE_CHECKS.items() if check == name)
    if config.scope != expected:
        raise ValueError(f"check {name} compares the {expected}; its scope cannot be {config.scope!r}")
    return name


def scope_text(record: ScanRecord, scope: Scope) -> str:
    if scope == "prompt":
        return record.prompt
    if scope == "response":
        return record.response
    return f"{record.prompt}\n{record.response}"


def check_near_dup(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    config = ctx.config if isinstance(ctx.config, NearDupConfig) else NearDupConfig()
    started = time.monotonic()
    ids = [r.record_id for r in records]
    texts = [scope_text(r, config.scope) for r in records]
    lookup = signatures_for(ctx.catalog, ids, texts, config.minhash_params(), config.scope)
    sketched_at = time.monotonic()
    ranks = {r.record_id: r.rank for r in records}
    prefix = {"pair": "nd_", "prompt": "ndp_", "response": "ndr_"}[config.scope]
    result = find_near_duplicates(ids, texts, ranks, config, lookup.sketches, prefix)
    kept_of = {m: c for c in result.clusters for m in c.members}
    findings = []
    what = {"pair": "near duplicate", "prompt": "near-duplicate prompt", "response": "near-duplicate response"}
    for rid in ids:
        details: dict[str, object] = {"scope": config.scope}
        if rid in result.empty:
            details["skipped"] = "no shingles: empty, whitespace or punctuation only"
            findings.append(Finding(rid, 0.0, False, None, details))
            continue
        nearest = result.nearest.get(rid)
        cluster = kept_of.get(rid)
        if nearest is None or cluster is None:
            findings.append(Finding(rid, 0.0, False))
            continue
        similarity = cluster.similarity_of(rid)
        details.update(
            cluster_id=cluster.cluster_id,
            kept_record_id=cluster.kept,
            similarity_to_kept=round(similarity, 6),
            nearest_record_id=nearest.record_id,
            nearest_similarity=round(nearest.similarity, 6),
        )
        if rid == cluster.kept:
            findings.append(Finding(rid, nearest.similarity, False, None, details))
            continue
        reason = f"{what[config.scope]} of {cluster.kept} (Jaccard {similarity:.3f}; kept: {cluster.keep_reason})"
        findings.append(Finding(rid, nearest.similarity, True, reason, details))
    summary = {
        "clusters": len(result.clusters),
        "duplicates": sum(len(c.removed) for c in result.clusters),
        **result.stats,
        "sketched": lookup.sketched,
        "signatures_reused": lookup.reused,
        "sketch_seconds": round(sketched_at - started, 3),
        "match_seconds": round(time.monotonic() - sketched_at, 3),
    }
    return CheckOutput(findings, result.clusters, summary)
