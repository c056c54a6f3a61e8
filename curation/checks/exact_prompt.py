"""The ``exact_prompt`` check: records asking the same prompt as another (after normalisation).

Such records are not removed: the same prompt with a different answer is a conflict for review, with the same
answer an exact duplicate (which ``exact`` flags). Snapshots keep each cluster within one split, so a question
never sits in train with its twin in test.
"""

from __future__ import annotations

from collections.abc import Sequence

from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, ScanRecord
from curation.similarity.exact import cluster_exact, dedup_key


def check_exact_prompt(records: Sequence[ScanRecord], ctx: CheckContext | None = None) -> CheckOutput:
    """Score 1.0 = another record asks the same prompt (after normalisation). Such records are not removed:
    the same prompt with a different answer is a conflict for review, with the same answer an exact duplicate.
    """
    ranks = {r.record_id: r.rank for r in records}
    clusters = cluster_exact(((r.record_id, dedup_key(r.prompt)) for r in records), ranks, "xp_")
    by_member = {m: c for c in clusters for m in c.members}
    findings = []
    for rec in records:
        cluster = by_member.get(rec.record_id)
        if cluster is None:
            findings.append(Finding(rec.record_id, 0.0, False))
            continue
        others = len(cluster.members) - 1
        findings.append(
            Finding(
                rec.record_id,
                1.0,
                True,
                f"same prompt as {others} other record(s) (cluster {cluster.cluster_id})",
                {"cluster_id": cluster.cluster_id, "kept_record_id": cluster.kept},
            )
        )
    response_of = {r.record_id: dedup_key(r.response) for r in records if r.record_id in by_member}
    conflicts = sum(len({response_of[m] for m in c.members}) > 1 for c in clusters)
    summary = {
        "clusters": len(clusters),
        "duplicates": sum(len(c.removed) for c in clusters),
        "conflicting_clusters": conflicts,
    }
    return CheckOutput(findings, clusters, summary)


SPEC = CheckSpec(
    "exact_prompt",
    check_exact_prompt,
    higher_score="1.0: another record asks the same prompt after normalisation; 0.0: none does",
    default=True,
    groups_splits=True,
    guide="another record asks the same prompt. With a different answer this is a conflict: approve the "
    "correct answer, reject or edit the wrong one.",
)
