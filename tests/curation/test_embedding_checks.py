"""outlier, inconsistency and semantic_dup on planted-defect records, with the real all-MiniLM-L6-v2."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.checks import neighbours, run_scan
from curation.checks.inconsistency import InconsistencyConfig, check_inconsistency
from curation.checks.near_dup import check_near_dup
from curation.checks.outlier import OutlierConfig, check_outlier
from curation.checks.semantic_dup import SemanticDupConfig, check_semantic_dup
from curation.checks.spec import CheckContext, ScanRecord
from curation.embeddings import cache as embedding_cache
from curation.similarity.near_dup import NearDupConfig
from schemas.catalog import Catalog
from tests.curation.embedding_support import CARD, RATE, rec
from tests.curation.ingest_support import run, write_lines

OFF_TOPIC = "Write a haiku about volcanoes erupting under the ocean at midnight."


def labelled() -> list[ScanRecord]:
    rows = [(p, "card_arrival") for p in CARD] + [(p, "exchange_rate") for p in RATE]
    records = [rec(i, p, label, label) for i, (p, label) in enumerate(rows)]
    records.append(rec(100, OFF_TOPIC, "card_arrival", "card_arrival"))
    records.append(rec(101, "Has my top up gone through?", "pending_top_up", "pending_top_up"))
    records.append(rec(102, "Has my top-up gone through?", "top_up_reverted", "top_up_reverted"))
    return records


def flagged(output: object) -> set[str]:
    return {f.record_id for f in output.findings if f.flagged}  # type: ignore[attr-defined]


def test_outlier_flags_the_off_topic_record_only() -> None:
    out = check_outlier(labelled(), CheckContext())
    assert flagged(out) == {"rec_0100"}
    worst = next(f for f in out.findings if f.record_id == "rec_0100")
    assert worst.score > 0.5 and worst.details and worst.details["group"] == "card_arrival"
    # the two top-up records are alone in their labels: no neighbours, a recorded reason, no crash
    alone = next(f for f in out.findings if f.record_id == "rec_0101")
    assert (alone.score, alone.flagged) == (0.0, False) and "no other record" in str(alone.details)


def test_outlier_without_labels_and_single_record() -> None:
    unlabelled = [rec(i, p, "ok") for i, p in enumerate(CARD + RATE)] + [rec(100, OFF_TOPIC, "ok")]
    out = check_outlier(unlabelled, CheckContext(config=OutlierConfig(k=5)))
    assert flagged(out) == {"rec_0100"}
    single = check_outlier([rec(0, "Only one record", "fine")], CheckContext())
    assert [(f.score, f.flagged) for f in single.findings] == [(0.0, False)]
    assert single.findings[0].details == {"skipped": "fewer than two records"}


def test_inconsistency_flags_conflicting_labels_with_both_ids() -> None:
    out = check_inconsistency(labelled(), CheckContext())
    assert flagged(out) == {"rec_0101", "rec_0102"}
    (pair,) = out.pairs
    assert (pair.record_a, pair.record_b) == ("rec_0102", "rec_0101")  # record_a: the later ingested
    assert pair.prompt_similarity is not None and pair.prompt_similarity > 0.95
    assert "rec_0101" in str(pair.reason) and "rec_0102" in str(pair.reason)


def test_inconsistency_free_text_and_bad_input() -> None:
    records = [
        rec(0, "What is the capital of France?", "The capital of France is Paris, on the river Seine."),
        rec(1, "What's the capital of France?", "Bananas are rich in potassium and grow in tropical climates."),
        rec(2, "How do plants make food?", "Plants make food by photosynthesis, using sunlight and water."),
        rec(3, "How do plants make their food?", "Through photosynthesis: light, water and CO2 become sugar."),
        rec(4, "", "an answer to nothing"),
        rec(5, "", "another answer to nothing"),
        rec(6, "Was ist die Hauptstadt von Frankreich?", "x" * 1_000_000),
    ]
    out = check_inconsistency(records, CheckContext(config=InconsistencyConfig(minhash_threshold=None)))
    assert flagged(out) == {"rec_0000", "rec_0001"}
    assert {(p.record_a, p.record_b) for p in out.pairs} == {("rec_0001", "rec_0000")}
    empty = next(f for f in out.findings if f.record_id == "rec_0004")
    assert empty.details == {"skipped": "empty prompt"} and not empty.flagged


PARAPHRASES = [
    ("How do I reset my password?", "Open Settings, choose Security and click Reset password."),
    ("What is the way to change my forgotten login password?", "Go to Settings > Security and press Reset password."),
    ("Tell me a fun fact about octopuses.", "Octopuses have three hearts and blue blood."),
    ("Share an interesting fact about octopuses.", "An octopus has three hearts, and its blood is blue."),
    ("How far is the Moon from Earth?", "About 384,400 kilometres on average."),
    ("Name a primary colour.", "Red is a primary colour."),
]


def test_semantic_dup_finds_paraphrases_that_minhash_misses() -> None:
    records = [rec(i, p, r) for i, (p, r) in enumerate(PARAPHRASES)]
    out = check_semantic_dup(records, CheckContext(config=SemanticDupConfig(threshold=0.8)))
    assert flagged(out) == {"rec_0001", "rec_0003"}
    assert {(p.record_a, p.record_b) for p in out.pairs} == {("rec_0001", "rec_0000"), ("rec_0003", "rec_0002")}
    assert {c.kept for c in out.clusters} == {"rec_0000", "rec_0002"}
    near = check_near_dup(records, CheckContext(config=NearDupConfig(threshold=0.5)))
    assert flagged(near) == set()


def test_scan_stores_conflicts_in_the_view(catalog: Catalog, tmp_path: Path) -> None:
    rows = [{"text": p, "category": "card_arrival"} for p in CARD[:5]]
    rows += [{"text": "Has my top up gone through?", "category": "pending_top_up"}]
    rows += [{"text": "Has my top-up gone through?", "category": "top_up_reverted"}]
    path = write_lines(tmp_path / "b.jsonl", rows)
    run(catalog, [path], mapping={"text": "user", "category": "assistant"}, template="intent")
    result = run_scan(catalog, ["inconsistency", "outlier", "semantic_dup"])
    assert result.checks["inconsistency"]["flagged"] == 2
    conflicts = catalog.query("SELECT label_a, label_b, prompt_a, prompt_b FROM conflicts")
    assert [(c["label_a"], c["label_b"]) for c in conflicts] == [("top_up_reverted", "pending_top_up")]
    assert (catalog.path.parent / "embeddings").is_dir()
    again = run_scan(catalog, ["inconsistency"], config={"inconsistency": {"prompt_threshold": 0.97}})
    assert (again.checks["inconsistency"]["embeddings_cached"], again.checks["inconsistency"]["embedded"]) == (14, 0)
    neighbours._MEMO.clear()  # as in a new process: vectors come from the workspace cache
    embedding_cache._CACHES.clear()
    third = run_scan(catalog, ["inconsistency"], config={"inconsistency": {"prompt_threshold": 0.96}})
    assert (third.checks["inconsistency"]["embeddings_cached"], third.checks["inconsistency"]["embedded"]) == (14, 0)


def test_another_embedding_recipe_is_another_scan(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"text": p, "category": "card_arrival"} for p in CARD[:4]]
    run(catalog, [write_lines(tmp_path / "c.jsonl", rows)], mapping={"text": "user", "category": "assistant"})
    monkeypatch.setenv("REFINERY_EMBED_ONNX", "fp32")
    first = run_scan(catalog, ["outlier"])
    assert run_scan(catalog, ["outlier"]).reused
    monkeypatch.setenv("REFINERY_EMBED_ONNX", "int8-row")  # other vectors: the stored findings do not apply
    other = run_scan(catalog, ["outlier"])
    assert not other.reused and other.scan_id != first.scan_id
    run_scan(catalog, ["near_dup"])
    monkeypatch.setenv("REFINERY_EMBED_ONNX", "fp32")
    assert run_scan(catalog, ["near_dup"]).reused  # a check without embeddings does not depend on the recipe
    assert run_scan(catalog, ["outlier"]).scan_id == first.scan_id


@pytest.mark.parametrize("bad", [{"k": 0}, {"z_threshold": -1}, {"field": "label"}, {"nope": 1}])
def test_bad_config_is_refused(bad: dict[str, object]) -> None:
    from curation.checks import ScanError, resolve_checks

    with pytest.raises(ScanError, match="config of 'outlier'"):
        resolve_checks(["outlier"], {"outlier": bad})


def test_conflicts_view_lists_cluster_conflicts_of_the_cheap_checks(catalog: Catalog, tmp_path: Path) -> None:
    """Same prompt, answers that differ only in case and punctuation: no conflict; other labels or another answer:
    a conflict, under the check that clustered them (the view reads clusters, so no embedding is needed)."""
    long_a = "Plants turn light, water and carbon dioxide into sugar and oxygen in their leaves, using chlorophyll."
    long_b = "It is how a plant makes food: chlorophyll captures sunlight to build glucose from CO2 and water."
    declined = "My card payment was declined at the supermarket this morning even though I have money in the {}"
    pairs = [
        ("Where is my card?", "card_lost"),
        ("where is my CARD", "Card_Lost!"),
        ("Has my top up gone through?", "pending_top_up"),
        ("Has my top-up gone through??", "top_up_failed"),
        ("Explain photosynthesis.", long_a),
        ("explain photosynthesis", long_b),
        (declined.format("account"), "declined_card_payment"),
        (declined.format("bank"), "card_payment_fee_charged"),
    ]
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]} for p, a in pairs]
    run(catalog, [write_lines(tmp_path / "c.jsonl", rows)])
    run_scan(catalog, ["exact_prompt", "near_dup_prompt"])
    found = catalog.query("SELECT check_name, prompt_a, response_a, response_b, score, reason FROM conflicts")
    by_prompt = {(r["check_name"], r["prompt_a"].lower().rstrip("?.").replace("-", " ")): r for r in found}
    assert set(by_prompt) == {
        ("exact_prompt", "has my top up gone through"),
        ("exact_prompt", "explain photosynthesis"),
        ("near_dup_prompt", declined.format("bank").lower()),
        ("near_dup_prompt", "has my top up gone through"),  # near_dup_prompt clusters the pair too
    }
    top_up = by_prompt[("exact_prompt", "has my top up gone through")]
    # chats carry no label column: a one-line answer of at most 4 words is the label
    assert {top_up["response_a"], top_up["response_b"]} == {"pending_top_up", "top_up_failed"}
    assert top_up["score"] == 1.0 and "different labels" in top_up["reason"]
    assert by_prompt[("exact_prompt", "explain photosynthesis")]["reason"].endswith("with different responses")
    assert (
        "(card_payment_fee_charged vs declined_card_payment)"
        in by_prompt[("near_dup_prompt", declined.format("bank").lower())]["reason"]
    )
