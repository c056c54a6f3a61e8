"""The check registry and the runner's contract: the specs are complete and consistent, what is derived from them
is what it was before the specs existed (snapshot ids hash the policy's lists, review datasets carry the guides),
a check that breaks the contract fails alone, and a missing optional dependency fails before any work."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import BaseModel

from curation.checks import (
    CHECKS,
    CheckContext,
    CheckOutput,
    CheckSpec,
    Finding,
    Needs,
    ScanError,
    ScanRecord,
    run_scan,
)
from curation.checks.registry import (
    BLOCKING_CHECKS,
    DEFAULT_CHECKS,
    DUPLICATE_CHECKS,
    SPECS,
    SPLIT_GROUP_CHECKS,
    check_configs,
    guide,
    resolve_checks,
)
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.snapshot import SnapshotPolicy
from schemas.catalog import Catalog

#: The reviewer guides as they were written before they moved into the specs (Argilla datasets show them).
GUIDES = {
    "exact": "an exact duplicate (after normalisation) of another record, shown as the other record. "
    "Reject unless this copy should be the one kept.",
    "exact_prompt": "another record asks the same prompt. With a different answer this is a conflict: approve the "
    "correct answer, reject or edit the wrong one.",
    "near_dup": "a near-duplicate of the other record (MinHash, whole pair). Reject redundant copies.",
    "near_dup_prompt": "the prompt nearly duplicates the other record's prompt. Check that both answers agree.",
    "near_dup_response": "the response nearly duplicates the other record's response.",
    "near_dup_eval": "overlaps an item of a registered eval set (contamination). Reject it unless the overlap is "
    "harmless boilerplate.",
    "inconsistency": "similar prompt, conflicting answer compared with the other record. Keep the correct one, edit "
    "or reject the other.",
}


def test_every_spec_is_complete_and_registered_once() -> None:
    assert len(CHECKS) == len(SPECS) == 17
    for spec in SPECS:
        assert spec.name.isidentifier() and spec.higher_score.strip(), spec.name
        assert spec.config is None or issubclass(spec.config, BaseModel)
        if spec.config is not None:
            assert spec.config.model_config.get("extra") == "forbid", spec.name  # a typo in a config file fails
            spec.config.model_validate(dict(spec.preset))  # the defaults (and the preset) are valid
    assert set(check_configs()) == {s.name for s in SPECS if s.config is not None}


def test_derived_lists_are_what_they_were_before_the_specs() -> None:
    """Their order matters: snapshot ids hash the default policy's lists as they are."""
    # The embedding checks joined the default set (2026-12: the product's premise is curated data, and the embedding
    # map, the conflicts view and label_issue need them; int8-row7 made them cheap enough). DEFAULT_CHECKS is not part
    # of any snapshot policy, so no snapshot id changes; a default scan's id does (its check list), as it should.
    assert DEFAULT_CHECKS == (
        "exact", "exact_prompt", "near_dup", "empty_response", "truncated", "repetitive", "length", "refusal", "pii",
        "contamination", "outlier", "inconsistency", "semantic_dup", "label_issue",
    )  # fmt: skip
    # label_issue is informative (no flag of it holds a record back, removes or groups one): the lists are unchanged
    assert BLOCKING_CHECKS == ("empty_response", "pii", "near_dup_eval", "contamination", "inconsistency")
    assert DUPLICATE_CHECKS == ("exact", "near_dup")
    assert SPLIT_GROUP_CHECKS == ("exact_prompt", "near_dup", "near_dup_prompt", "near_dup_response", "semantic_dup")
    policy = SnapshotPolicy()
    assert policy.blocking_checks == list(BLOCKING_CHECKS) and policy.group_by == list(SPLIT_GROUP_CHECKS)
    assert policy.exclude_duplicates == list(DUPLICATE_CHECKS)


def test_guides_come_from_the_specs_unchanged() -> None:
    assert {name: guide(name) for name in GUIDES} == GUIDES
    assert guide("length") == guide("no_such_check") == "flagged by this check; the findings field says why."


def test_presets_and_renames_resolve_as_before() -> None:
    resolved = resolve_checks(["near_dup", "near_dup_response"], {"near_dup": {"scope": "prompt"}})
    assert list(resolved) == ["near_dup_prompt", "near_dup_response"]
    assert getattr(resolved["near_dup_response"], "scope", None) == "response"
    with pytest.raises(ScanError, match="compares the prompt; its scope cannot be 'pair'"):
        resolve_checks(["near_dup_prompt"], {"near_dup_prompt": {"scope": "pair"}})
    with pytest.raises(ScanError, match="requested twice"):
        resolve_checks(["near_dup", "near_dup_prompt"], {"near_dup": {"scope": "prompt"}})


def test_a_missing_optional_dependency_fails_at_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    needs = Needs(embedding_model=True, modules=("refinery_no_such_module",), extra="embed")
    monkeypatch.setitem(CHECKS, "outlier", CheckSpec("outlier", _never, "never", needs=needs))
    with pytest.raises(ScanError, match=r"'outlier' needs refinery_no_such_module.*pip install 'refinery\[embed\]'"):
        resolve_checks(["exact", "outlier"])


def _never(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    raise AssertionError("a check whose dependency is missing must never run")


def _one_short(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    return CheckOutput([Finding(r.record_id, 0.0, False) for r in records[1:]])


def _too_high(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    return CheckOutput([Finding(r.record_id, 1.5, True) for r in records])


def _flag_at_zero(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    return CheckOutput([Finding(r.record_id, 0.0, True, "low is bad here") for r in records])


@pytest.fixture
def catalog_with_records(catalog: Catalog, tmp_path: Path) -> Catalog:
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(4)
    ]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    ingest(catalog, [tmp_path / "t.jsonl"], IngestOptions(name="t"))
    return catalog


@pytest.mark.parametrize(
    ("check", "message"),
    [(_one_short, "returned 3 findings for 4 records"), (_too_high, "outside [0, 1]"), (_flag_at_zero, "score 0")],
)
def test_the_runner_holds_every_check_to_the_contract(
    catalog_with_records: Catalog, monkeypatch: pytest.MonkeyPatch, check: object, message: str
) -> None:
    monkeypatch.setitem(CHECKS, "broken", CheckSpec("broken", check, "whatever"))  # type: ignore[arg-type]
    result = run_scan(catalog_with_records, ["exact", "broken"])
    assert result.checks["broken"]["error"].startswith("ContractError") and message in result.checks["broken"]["error"]
    assert "error" not in result.checks["exact"]  # the others still ran and were stored
    stored = catalog_with_records.query("SELECT DISTINCT check_name FROM findings WHERE scan_id = ?", [result.scan_id])
    assert [r["check_name"] for r in stored] == ["exact"]
