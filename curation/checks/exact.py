"""The ``exact`` check: records that duplicate another after normalisation (case, whitespace, punctuation).

Two records with byte-identical canonical messages are already one record (same id); this finds the ones that
differ only in ways a model would not learn from. Each cluster keeps its best-ranked member
(:class:`~curation.similarity.exact.KeepRank`); the others are flagged, and snapshots leave them out.
"""

from __future__ import annotations

from collections.abc import Sequence

from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, ScanRecord
from curation.similarity.exact import DuplicateCluster, cluster_exact, dedup_key


def _duplicate_output(records: Sequence[ScanRecord], clusters: list[DuplicateCluster], what: str) -> CheckOutput:
    by_member: dict[str, DuplicateCluster] = {m: c for c in clusters for m in c.members}
    findings = []
    for rec in records:
        cluster = by_member.get(rec.record_id)
        if cluster is None or cluster.kept == rec.record_id:
            findings.append(Finding(rec.record_id, 0.0, False))
        else:
            findings.append(
                Finding(
                    rec.record_id,
                    1.0,
                    True,
                    f"{what} of {cluster.kept} (kept: {cluster.keep_reason})",
                    {"cluster_id": cluster.cluster_id, "kept_record_id": cluster.kept},
                )
            )
    removed = sum(len(c.removed) for c in clusters)
    return CheckOutput(findings, clusters, {"clusters": len(clusters), "duplicates": removed})


def check_exact(records: Sequence[ScanRecord], ctx: CheckContext | None = None) -> CheckOutput:
    """Score 1.0 = this record duplicates another after normalisation and is not the kept one; else 0.0."""
    ranks = {r.record_id: r.rank for r in records}
    clusters = cluster_exact(((r.record_id, dedup_key(r.prompt, r.response)) for r in records), ranks, "xd_")
    return _duplicate_output(records, clusters, "exact duplicate (normalised text)")


SPEC = CheckSpec(
    "exact",
    check_exact,
    higher_score="1.0: a removed (non-kept) duplicate of another record after normalisation; 0.0: not one",
    default=True,
    removes_duplicates=True,
    guide="an exact duplicate (after normalisation) of another record, shown as the other record. "
    "Reject unless this copy should be the one kept.",
)
