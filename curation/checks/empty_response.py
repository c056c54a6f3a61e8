"""The ``empty_response`` check: the response has no visible character."""

from __future__ import annotations

from collections.abc import Sequence

from curation.checks.response import is_blank, max_score_summary
from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, ScanRecord


def check_empty_response(records: Sequence[ScanRecord], ctx: CheckContext | None = None) -> CheckOutput:
    """``empty_response``: score 1.0 (flagged) when the response has no visible character: empty (a prompt-only
    record, or an assistant turn with no text), whitespace, or only invisible control/format characters such as
    zero-width spaces; else 0.0. No threshold: the rule is exact.

    Measured: 0 of 9,999 banking77, 427 self_instruct, 500 sharegpt, 400 oasst and 7,673 toolformer records
    (ingest already refuses training rows without an assistant turn); a planted-defect fixture proves the flag.
    """
    findings = []
    prompt_only = 0
    for rec in records:
        if is_blank(rec.response):
            what = "no response (prompt-only record)" if rec.response == "" else "response is whitespace only"
            prompt_only += rec.response == ""
            findings.append(Finding(rec.record_id, 1.0, True, what))
        else:
            findings.append(Finding(rec.record_id, 0.0, False))
    return CheckOutput(findings, summary=max_score_summary(findings, prompt_only=prompt_only))


SPEC = CheckSpec(
    "empty_response",
    check_empty_response,
    higher_score="1.0: the response has no visible character; 0.0: it has",
    shard_summary={"max_score": "max", "prompt_only": "sum"},
    default=True,
    blocks_snapshot=True,
)
