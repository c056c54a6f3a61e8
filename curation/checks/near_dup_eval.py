"""The ``near_dup_eval`` check: training records that nearly duplicate a registered eval item (MinHash, verified
exact Jaccard on the prompt contents; the matcher is :mod:`curation.similarity.eval_match`).

The ``near_dup_eval`` check: one finding per training record; score = the best exact Jaccard to any eval item
(0.0 when none reaches the threshold); flagged when one does; the reason and details name the best eval item
(ties: smallest eval record id, then eval set name). A training record that *is* an eval item (same content,
so the same record id) matches itself with similarity 1.0 and is flagged. Nothing is clustered or removed
here: the finding says which eval item leaked, and a reviewer or a snapshot policy decides. Every verified
match is also a :class:`ContaminationHit` (method ``minhash``, overlap = the exact Jaccard), so the
``contamination`` view lists these beside the n-gram check's hits. Texts are compared on their contents, the
prompt templates stripped: reasons then say ``prompt content, template stripped`` and
``details.template_stripped`` is true.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, ContaminationHit, Finding, Needs, ScanRecord
from curation.similarity.eval_match import (
    ContaminationConfig,
    ContaminationError,
    best_matches,
    find_matches,
    load_eval_items,
)
from curation.similarity.near_dup import scope_text

EMPTY_CONTENT = "empty, whitespace or punctuation only, or nothing but the prompt template"


def check_near_dup_eval(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    """The ``near_dup_eval`` scan check (see the module docstring)."""
    config = ctx.config if isinstance(ctx.config, ContaminationConfig) else ContaminationConfig()
    if ctx.catalog is None:
        raise ContaminationError("near_dup_eval needs the catalog (the eval sets are registered there)")
    started = time.monotonic()
    references = load_eval_items(ctx.catalog, config.scope, config.eval_sets)
    ids = [r.record_id for r in records]
    texts = [scope_text(r.prompt, r.response, config.scope) for r in records]
    matches, stats, empty = find_matches(ctx.catalog, ids, texts, references, config)
    best = best_matches(matches)
    n_matches: dict[str, int] = {}
    for m in matches:
        n_matches[m.record_id] = n_matches.get(m.record_id, 0) + 1
    hits = [
        ContaminationHit(m.record_id, m.matched_in, m.matched_record_id, round(m.similarity, 6), "minhash")
        for m in matches
    ]
    findings = []
    for rid in ids:
        match = best.get(rid)
        if match is None:
            skipped = {"scope": config.scope, "skipped": f"no shingles: {EMPTY_CONTENT}"}
            findings.append(Finding(rid, 0.0, False, None, skipped if rid in empty else None))
            continue
        similarity = round(match.similarity, 6)
        compared = f"{config.scope} content, template stripped" if match.template_stripped else config.scope
        reason = (
            f"near duplicate of eval item {match.matched_record_id} in eval set {match.matched_in!r} "
            f"(Jaccard {match.similarity:.3f}, {compared})"
        )
        details: dict[str, object] = {
            "eval_set": match.matched_in,
            "eval_record_id": match.matched_record_id,
            "similarity": similarity,
            "scope": config.scope,
            "template_stripped": match.template_stripped,
            "eval_matches": n_matches[rid],
        }
        findings.append(Finding(rid, match.similarity, True, reason, details))
    summary = {
        "contaminated": len(best),
        "eval_sets": len({r.group for r in references}),
        "eval_items": len(references),
        **stats,
        "seconds": round(time.monotonic() - started, 3),
    }
    return CheckOutput(findings, [], summary, contamination=hits)


SPEC = CheckSpec(
    "near_dup_eval",
    check_near_dup_eval,
    higher_score="closer to an eval item (the best exact Jaccard of the contents, 0.0 below the threshold)",
    config=ContaminationConfig,
    blocks_snapshot=True,
    guide="overlaps an item of a registered eval set (contamination). Reject it unless the overlap is "
    "harmless boilerplate.",
    needs=Needs(eval_sets=True),
)
