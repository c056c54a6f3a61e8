"""The ``near_dup`` scan checks: one finding per record, clusters with the kept member and true similarities.

Three registered names, one per scope, because a snapshot policy excludes duplicates by check name and the
scopes mean different things: ``near_dup`` (the whole pair: a removable duplicate), ``near_dup_prompt`` (the
same question asked twice: input for the inconsistency check, not a removal) and ``near_dup_response``. The
``scope`` config key of ``near_dup`` selects one of the other two (see :func:`resolve_scope`), so results never
land under a name that means something else.

Clusters come from the linear join (``mode="clusters"`` of :func:`~curation.similarity.near_dup.find_near_duplicates`),
which verifies a pair only while its records are in different clusters. Score: the highest exact Jaccard
similarity among the record's verified pairs (at least the threshold for every clustered record; 0.0 when
none), so the most similar neighbour it names is the most similar one verified, not always the most similar
one there is. Flag: the record is a removed (non-kept) member of a cluster; its similarity to the kept member
is computed exactly for every member.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import overload

from pydantic import BaseModel

from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, ScanRecord
from curation.executors import release_freed_memory
from curation.similarity.jaccard import ShingleRuns
from curation.similarity.minhash_store import signatures_for
from curation.similarity.near_dup import NearDupConfig, Scope, find_near_duplicates, scope_text

SCOPE_CHECKS: dict[Scope, str] = {"pair": "near_dup", "prompt": "near_dup_prompt", "response": "near_dup_response"}


def resolve_scope(name: str, config: NearDupConfig) -> str:
    """The check name results are stored under: ``near_dup`` with ``scope: prompt`` is ``near_dup_prompt``."""
    if name == "near_dup":
        return SCOPE_CHECKS[config.scope]
    expected = next(scope for scope, check in SCOPE_CHECKS.items() if check == name)
    if config.scope != expected:
        raise ValueError(f"check {name} compares the {expected}; its scope cannot be {config.scope!r}")
    return name


def _stored_name(name: str, config: BaseModel) -> str:
    if not isinstance(config, NearDupConfig):
        raise TypeError(f"{name} takes a NearDupConfig, not {type(config).__name__}")
    return resolve_scope(name, config)


class ScopeTexts(Sequence[str]):
    """The compared text of each record, built when read: a list of them would hold every text twice (0.5 GB at
    1M records), and the engine only reads them a batch at a time."""

    def __init__(self, records: Sequence[ScanRecord], scope: Scope) -> None:
        self.records, self.scope = records, scope

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [scope_text(r.prompt, r.response, self.scope) for r in self.records[index]]
        record = self.records[index]
        return scope_text(record.prompt, record.response, self.scope)


def check_near_dup(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    config = ctx.config if isinstance(ctx.config, NearDupConfig) else NearDupConfig()
    started = time.monotonic()
    ids = [r.record_id for r in records]
    texts = ScopeTexts(records, config.scope)
    shingles = ShingleRuns()  # the sets of the records sketched now, so verification does not shingle them again
    collect = functools.partial(ShingleRuns.add, shingles)
    lookup = signatures_for(
        ctx.catalog, ids, texts, config.minhash_params(), config.scope, on_shingles=collect,
        executor=ctx.executor, stage=f"{SCOPE_CHECKS[config.scope]}:sketch",
    )  # fmt: skip
    release_freed_memory()  # the signatures read from the catalog went through Arrow's allocator (512 MB at 1M)
    sketched_at = time.monotonic()
    ranks = {r.record_id: r.rank for r in records}
    prefix = {"pair": "nd_", "prompt": "ndp_", "response": "ndr_"}[config.scope]
    result = find_near_duplicates(
        ids, texts, ranks, config, lookup.sketches, prefix, mode="clusters", shingles=shingles,
        executor=ctx.executor, stage=SCOPE_CHECKS[config.scope],
    )  # fmt: skip
    del shingles, collect
    sketched, reused = lookup.sketched, lookup.reused
    del lookup, ranks  # the signatures (512 MB at 1M records) are not needed for the findings
    result.pairs.clear()
    membership = {m: (c, s) for c in result.clusters for m, s in zip(c.members, c.similarities, strict=True)}
    findings = []
    what = {"pair": "near duplicate", "prompt": "near-duplicate prompt", "response": "near-duplicate response"}
    for rid in ids:
        details: dict[str, object] = {"scope": config.scope}
        if rid in result.empty:
            details["skipped"] = "no shingles: empty, whitespace or punctuation only"
            findings.append(Finding(rid, 0.0, False, None, details))
            continue
        nearest = result.nearest.get(rid)
        member = membership.get(rid)
        if nearest is None or member is None:
            findings.append(Finding(rid, 0.0, False))
            continue
        cluster, similarity = member
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
        "sketched": sketched,
        "signatures_reused": reused,
        "sketch_seconds": round(sketched_at - started, 3),
        "match_seconds": round(time.monotonic() - sketched_at, 3),
    }
    return CheckOutput(findings, result.clusters, summary)


def _spec(scope: Scope, higher_score: str, guide: str, default: bool = False, removes: bool = False) -> CheckSpec:
    """One of the three names: the same function and config, its scope preset, results stored under its name."""
    return CheckSpec(
        SCOPE_CHECKS[scope],
        check_near_dup,
        higher_score=higher_score,
        config=NearDupConfig,
        groups_splits=True,
        guide=guide,
        preset={} if scope == "pair" else {"scope": scope},
        rename=_stored_name,
        default=default,
        removes_duplicates=removes,
    )


SPECS = (
    _spec(
        "pair",
        "a more similar verified neighbour (exact Jaccard of the whole pair)",
        "a near-duplicate of the other record (MinHash, whole pair). Reject redundant copies.",
        default=True,
        removes=True,
    ),
    _spec(
        "prompt",
        "a more similar verified neighbour (exact Jaccard of the prompts)",
        "the prompt nearly duplicates the other record's prompt. Check that both answers agree.",
    ),
    _spec(
        "response",
        "a more similar verified neighbour (exact Jaccard of the responses)",
        "the response nearly duplicates the other record's response.",
    ),
)
