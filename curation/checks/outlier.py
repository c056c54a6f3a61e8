"""The ``outlier`` check: records far from their nearest neighbours in embedding space (within their label)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from curation.checks.neighbours import EMBEDDING_NEEDS, EmbeddingCheckConfig, field_vectors, neighbours
from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, ScanRecord
from curation.similarity.knn import knn


class OutlierConfig(EmbeddingCheckConfig):
    """``outlier``: records far from their k nearest neighbours (within their label, where records carry one)."""

    field: str = Field("prompt", pattern="^(prompt|response)$", description="Text embedded: prompt or response.")
    by_label: bool = Field(True, description="Compare records with records of the same label, where labelled.")
    z_threshold: float = Field(
        5.0, gt=0.0, description="Flag at this robust z-score of the mean kNN cosine distance (score 0.5)."
    )
    min_group: int = Field(
        20, ge=2, description="Groups (labels) smaller than this are scored against all small groups pooled."
    )


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
            found = neighbours(records, config.field, ctx, config.model, config.k)
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


SPEC = CheckSpec(
    "outlier",
    check_outlier,
    higher_score="further from its nearest neighbours than the rest of its label (robust z, 0.5 at the threshold)",
    config=OutlierConfig,
    default=True,
    needs=EMBEDDING_NEEDS,
)
