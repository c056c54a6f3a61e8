"""label_issue on planted label errors with the real all-MiniLM-L6-v2; the default scan that runs it with the other
embedding checks (the conflicts view, the report's map, the review suggestion, a missing embed extra); and banking77
with planted noise (real data)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from curation.checks import CHECKS, DEFAULT_CHECKS, Needs, ScanError, run_scan
from curation.checks.label_issue import LabelIssueConfig, check_label_issue
from curation.checks.runner import enforce_contract, load_training_records
from curation.checks.spec import CheckContext, ScanRecord
from curation.report.collect import collect_report
from curation.review.push import load_items, queue_round, select_items, suggestions
from schemas.catalog import Catalog
from tests.curation.embedding_support import CARD, MISFILED, RATE, banking_like, rec
from tests.curation.ingest_support import run
from tests.support.require import require_module


def intents(with_label_column: bool) -> list[ScanRecord]:
    rows = [(p, "card_arrival") for p in CARD] + [(p, "exchange_rate") for p in RATE] + [(MISFILED, "card_arrival")]
    return [rec(i, p, a, a if with_label_column else None) for i, (p, a) in enumerate(rows)]


def flagged(output: Any) -> set[str]:
    return {f.record_id for f in output.findings if f.flagged}


@pytest.mark.parametrize("with_label_column", [True, False])
def test_a_query_under_the_wrong_intent_is_flagged_with_the_intent_it_belongs_to(with_label_column: bool) -> None:
    records = intents(with_label_column)
    out = check_label_issue(records, CheckContext())
    enforce_contract("label_issue", records, out)
    assert flagged(out) == {"rec_0020"}
    finding = next(f for f in out.findings if f.record_id == "rec_0020")
    assert finding.details is not None
    # the label as written (a label given only as the response is shown as the response, not a hash of it)
    assert (finding.details["label"], finding.details["suggested_label"]) == ("card_arrival", "exchange_rate")
    assert finding.details["response_is_label"] is True
    assert finding.score >= LabelIssueConfig().threshold and "suggested 'exchange_rate'" in str(finding.reason)
    assert finding.details["suggested_probability"] > finding.details["label_probability"]
    (pair,) = out.pairs
    assert pair.record_a == "rec_0020" and pair.record_b in {f"rec_{i:04d}" for i in range(10, 20)}
    assert pair.score == finding.score and pair.prompt_similarity is not None and pair.prompt_similarity > 0.5
    # the clean records: their own label is the most probable one
    clean = [f for f in out.findings if f.record_id != "rec_0020"]
    assert all(f.score < 0.35 for f in clean) and out.summary["labels"] == 2 and out.summary["labelled"] == 21


def test_free_text_answers_are_not_labels_and_nothing_is_embedded() -> None:
    answer = "Thanks for asking. We will look into it and reply by e-mail."
    records = [rec(i, p, answer) for i, p in enumerate(CARD)]
    out = check_label_issue(records, CheckContext())
    enforce_contract("label_issue", records, out)
    assert flagged(out) == set() and "embedded" not in out.summary
    assert out.summary["skipped"] == "fewer than 50% of the records carry a label"
    assert {json.dumps(f.details) for f in out.findings} == {json.dumps({"skipped": out.summary["skipped"]})}
    one_label = check_label_issue([rec(i, p, "card_arrival") for i, p in enumerate(CARD)], CheckContext())
    assert one_label.summary["skipped"] == "1 distinct labels (needs 2 to 1000)" and flagged(one_label) == set()
    assert check_label_issue([], CheckContext()).findings == []


def test_unlabelled_records_among_labelled_ones_and_non_english_text() -> None:
    records = intents(True)
    records.append(rec(30, "Cuándo llegará mi nueva tarjeta?", "card_arrival", "card_arrival"))
    records.append(rec(31, "Erzähl mir einen Witz über Wechselkurse.", "Here is a long answer, not a label at all."))
    records.append(rec(32, "", "exchange_rate", "exchange_rate"))  # an empty prompt: a record like any other
    records.append(rec(33, "Has my top-up gone through?", "top_up_reverted", "top_up_reverted"))  # a label met once
    out = check_label_issue(records, CheckContext())
    enforce_contract("label_issue", records, out)
    by_id = {f.record_id: f for f in out.findings}
    assert by_id["rec_0031"].details == {"skipped": "no label"} and by_id["rec_0031"].score == 0.0
    # nothing else carries its label, so its neighbours cannot judge it (they would always disagree)
    assert by_id["rec_0033"].details == {"skipped": "label 'top_up_reverted' has 1 record(s), under 5"}
    assert "rec_0020" in flagged(out) and "rec_0030" not in flagged(out)  # Spanish card query: its own label


def test_a_truncated_or_misspelt_label_is_flagged_as_a_near_miss_of_the_label_it_nearly_is() -> None:
    records = intents(True)
    records.append(rec(40, "Why hasn't my card shown up yet?", "card_arri", "card_arri"))  # truncated
    records.append(rec(41, "What rate will I get for dollars?", "exchnage_rate", "exchnage_rate"))  # two edits
    records.append(rec(42, "When does my card get here?", "card", "card"))  # a prefix of card_arrival only
    records.append(rec(43, "Has my top-up gone through?", "top_up_reverted", "top_up_reverted"))  # near no label
    out = check_label_issue(records, CheckContext())
    enforce_contract("label_issue", records, out)
    by_id = {f.record_id: f for f in out.findings}
    for rid, label, suggested in [("rec_0040", "card_arri", "card_arrival"),
                                  ("rec_0041", "exchnage_rate", "exchange_rate"),
                                  ("rec_0042", "card", "card_arrival")]:  # fmt: skip
        finding = by_id[rid]
        assert finding.flagged and finding.score == 1.0, rid
        assert finding.details is not None and finding.details["suggested_label"] == suggested
        assert finding.details["near_miss_of"] == [suggested]
        assert f"label {label!r} (1 record(s)) is a near miss of {suggested!r}" in str(finding.reason)
    assert by_id["rec_0043"].details == {"skipped": "label 'top_up_reverted' has 1 record(s), under 5"}
    strict = check_label_issue(records, CheckContext(config=LabelIssueConfig(max_label_edits=0)))
    assert not next(f for f in strict.findings if f.record_id == "rec_0041").flagged  # two edits > 0
    assert next(f for f in strict.findings if f.record_id == "rec_0040").flagged  # a prefix needs no edit


# ------------------------------------------------------------------------------------------ the default scan


def test_default_scan_runs_the_embedding_checks_and_lists_every_conflict(catalog: Catalog, tmp_path: Path) -> None:
    ids = banking_like(catalog, tmp_path)
    result = run_scan(catalog)
    assert set(result.checks) == set(DEFAULT_CHECKS)
    for name in ("outlier", "inconsistency", "semantic_dup", "label_issue"):
        assert "error" not in result.checks[name] and "skipped" not in result.checks[name], name
    rows = catalog.query("SELECT check_name, record_a, record_b, label_a, label_b, reason FROM conflicts")
    top_up = {ids["Has my top up gone through?"], ids["Has my top-up gone through?"]}
    by_check: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_check.setdefault(row["check_name"], []).append(row)
    # the same query under two intents: found by exact_prompt (the cheap check) and by inconsistency
    (exact,) = by_check["exact_prompt"]
    assert {exact["record_a"], exact["record_b"]} == top_up
    assert "different labels (top_up_reverted vs pending_top_up)" in exact["reason"]
    assert {frozenset((r["record_a"], r["record_b"])) for r in by_check["inconsistency"]} == {frozenset(top_up)}
    assert {frozenset((r["record_a"], r["record_b"])) for r in by_check["near_dup"]} == {frozenset(top_up)}
    # the misfiled query: label_issue, next to the most similar exchange_rate record
    issues = [r for r in by_check["label_issue"] if r["record_a"] == ids[MISFILED]]
    assert len(issues) == 1 and (issues[0]["label_a"], issues[0]["label_b"]) == ("card_arrival", "exchange_rate")
    # the report's embedding map is drawn from what the default scan stored
    report = collect_report(catalog, examples=0)
    assert report.embedding_map is not None and report.embedding_map.total == result.records
    # review: a label issue goes to Argilla with its suggested label as the corrected response
    require_module("argilla", "pip install 'refinery[review]'")
    (item,) = [i for i in select_items(catalog, result.scan_id, ["label_issue"]) if i.record_id == ids[MISFILED]]
    assert (item.suggested_label, item.response_is_label) == ("exchange_rate", True)
    pushed = {(s.question_name, s.value, s.agent) for s in suggestions(item)}
    assert pushed == {("decision", "edit", "label_issue"), ("corrected_response", "exchange_rate", "label_issue")}
    queue_round(catalog, "http://127.0.0.1:1", "r1", [item], scan_id=result.scan_id, min_submitted=1, policy="majority")
    (again,) = load_items(catalog, "r1", pending_only=True)  # what a resumed push sends
    assert {(s.question_name, s.value) for s in suggestions(again)} == {(q, v) for q, v, _ in pushed}
    others = [i for i in select_items(catalog, result.scan_id) if "label_issue" not in i.scores]
    assert others and all([s.value for s in suggestions(i)] == ["reject"] for i in others)


def test_without_the_embed_extra_the_default_scan_says_so_and_runs_the_rest(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    banking_like(catalog, tmp_path)
    embedding = [n for n in DEFAULT_CHECKS if CHECKS[n].needs.embedding_model]
    assert embedding == ["outlier", "inconsistency", "semantic_dup", "label_issue"]
    missing = Needs(embedding_model=True, modules=("refinery_no_such_module",), extra="embed")
    for name in embedding:
        monkeypatch.setitem(CHECKS, name, replace(CHECKS[name], needs=missing))
    result = run_scan(catalog)
    err = " ".join(capsys.readouterr().err.split())  # one line (a narrow console wraps it)
    assert err == (
        "scan: outlier, inconsistency, semantic_dup, label_issue left out (not run: needs refinery_no_such_module, "
        "which cannot be imported: pip install 'refinery[embed]')"
    )
    for name in embedding:
        assert result.checks[name] == {
            "skipped": "not run: needs refinery_no_such_module, which cannot be imported: pip install 'refinery[embed]'"
        }
    ran = {r["check_name"] for r in catalog.query("SELECT DISTINCT check_name FROM findings")}
    assert ran == set(DEFAULT_CHECKS) - set(embedding)
    # the top-up query under two intents, from the cheap checks alone
    conflicts = catalog.query("SELECT check_name FROM conflicts ORDER BY check_name")
    assert [r["check_name"] for r in conflicts] == ["exact_prompt", "near_dup"]
    with pytest.raises(ScanError, match=r"'outlier' needs refinery_no_such_module"):
        run_scan(catalog, ["exact", "outlier"])  # named: fails at once
    with pytest.raises(ScanError, match=r"'label_issue' needs"):
        run_scan(catalog, None, {"label_issue": {"threshold": 0.5}})  # configured: named too


# ------------------------------------------------------------------------------------------ banking77 (real data)


@pytest.fixture(scope="module")
def banking77(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Catalog, Any]:
    """banking77 train (9,999 records, intent template) after a default scan: embeds every prompt once."""
    root = tmp_path_factory.mktemp("banking77")
    catalog = Catalog(root / "catalog.duckdb")
    catalog.migrate()
    run(catalog, [shared_data / "banking77/train.csv"], format="csv", mapping={"text": "user", "category": "assistant"},
        template="intent")  # fmt: skip
    return catalog, run_scan(catalog)


@pytest.mark.realdata
@pytest.mark.slow
def test_banking77_default_scan_lists_the_top_up_conflict_by_every_check_that_finds_it(banking77: Any) -> None:
    catalog, result = banking77
    for name in DEFAULT_CHECKS:
        assert "error" not in result.checks[name] and "skipped" not in result.checks[name], name
    rows = catalog.query(
        "SELECT DISTINCT check_name FROM conflicts WHERE prompt_a LIKE '%Has my top%up gone through?' "
        "AND prompt_b LIKE '%Has my top%up gone through?' AND label_a <> label_b"
    )
    assert {"exact_prompt", "inconsistency"} <= {r["check_name"] for r in rows}
    # measured 2026-12 (docs/CHECKS.md): 468 of 9,999 flagged; a quarter of a sample were real label errors
    assert 200 < result.checks["label_issue"]["flagged"] < 800


@pytest.mark.realdata
@pytest.mark.slow
def test_banking77_planted_label_noise_is_found_with_the_right_suggestion(banking77: Any) -> None:
    catalog, _ = banking77
    records = load_training_records(catalog)
    names = sorted({r.label or "" for r in records})
    rng = np.random.default_rng(0)
    planted = set(rng.choice(len(records), len(records) // 10, replace=False).tolist())
    noisy = []
    for i, r in enumerate(records):
        if i in planted:  # a uniformly random other intent, as the response too
            other = names[(names.index(r.label or "") + int(rng.integers(1, len(names)))) % len(names)]
            r = replace(r, label=other, response=other)
        noisy.append(r)
    out = check_label_issue(noisy, CheckContext(catalog))  # vectors from the scan's cache
    assert out.summary["embedded"] == 0
    hits = [i for i, f in enumerate(out.findings) if f.flagged and i in planted]
    precision, recall = len(hits) / len(flagged(out)), len(hits) / len(planted)
    # measured: precision 0.72, recall 0.94 (cleanlab on logistic-regression probabilities: 0.66, 0.77)
    assert precision > 0.65 and recall > 0.9, (precision, recall)
    right = [out.findings[i].details["suggested_label"] == records[i].label for i in hits]  # type: ignore[index]
    assert sum(right) / len(right) > 0.85


@pytest.mark.slow
def test_argilla_receives_the_suggested_label(
    catalog: Catalog, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The real server accepts the suggestions: 'edit' on the decision, the label on the corrected response."""
    from curation.review.connection import ReviewPaths, resolve_connection
    from curation.review.push import push
    from curation.review.server import server_venv
    from tests.curation.review_support import review_environment
    from tests.support.require import missing

    if not (server_venv() / "bin" / "python").exists():
        missing("argilla-server venv missing (make install creates it)")
    ids = banking_like(catalog, tmp_path)
    scan = run_scan(catalog)
    with review_environment(tmp_path_factory.mktemp("argilla")) as env:
        key = json.loads(ReviewPaths(env.ws).credentials.read_text())["api_key"]
        ws = catalog.path.parent
        (ws / "review.json").write_text(json.dumps({"api_url": env.url, "api_key": key}), encoding="utf-8")
        connection = resolve_connection(ws)
        result = push(catalog, connection, scan_id=scan.scan_id, checks=["label_issue"], round_name="labels")
        assert result.pushed >= 1
        dataset = connection.client().datasets(name="refinery-labels", workspace="refinery")
        records = {r.id: r for r in dataset.records(with_suggestions=True)}
    misfiled = records[ids[MISFILED]]
    assert misfiled.suggestions["decision"].value == "edit"
    assert misfiled.suggestions["corrected_response"].value == "exchange_rate"
    assert misfiled.suggestions["corrected_response"].agent == "label_issue"
    assert "suggested 'exchange_rate'" in misfiled.fields["findings"]
