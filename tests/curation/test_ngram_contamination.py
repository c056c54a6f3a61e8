"""The n-gram contamination check on planted leaks through a real catalog: exact flags, hits stored and shown
by the contamination view (next to near_dup_eval's minhash hits), a no-op without eval sets, scale."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from curation.checks import run_scan
from curation.checks.contamination import EvalIndex, NgramContaminationConfig, check_ngram_contamination, overlaps
from curation.checks.spec import CheckContext, ScanRecord
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.similarity.eval_match import Reference
from curation.similarity.exact import KeepRank
from schemas.catalog import Catalog

LONG_EVAL = "Explain in simple words why the sky looks blue during the day but turns red and orange at sunset time"
MID_EVAL = "How do I reset the password of my online banking account"  # 11 words: 8-grams
SHORT_EVAL = "Where is my parcel"  # 4 words: whole prompt
TEMPLATE = "Identify the intent of the following customer message. Answer with the label only.\n\nCustomer message: {}"


def _chat(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("\n".join(_chat(u, a) for u, a in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def leaks(tmp_path: Path, catalog: Catalog) -> dict[str, str]:
    filler = [(TEMPLATE.format(f"question {i} about subject {i * 3} and other thing {i}"), "x") for i in range(40)]
    planted = {
        "long_leak": TEMPLATE.format(LONG_EVAL.upper() + "!"),  # whole item, other case and punctuation
        "long_partial": TEMPLATE.format(LONG_EVAL.rsplit(" red", 1)[0] + " purple instead"),  # first half only
        "mid_leak": TEMPLATE.format("hi, " + MID_EVAL + "?"),
        "short_leak": TEMPLATE.format("where is my parcel?"),
        "short_inside": TEMPLATE.format("I ordered shoes two weeks ago from your shop and where is my parcel now"),
        "unrelated": TEMPLATE.format("Can I change the colour of my card"),
    }
    _write(tmp_path / "train.jsonl", filler + [(p, "label") for p in planted.values()])
    ingest(catalog, [tmp_path / "train.jsonl"], IngestOptions(name="train"))
    evals = [
        (LONG_EVAL, "a"),
        (MID_EVAL, "b"),
        (SHORT_EVAL, "c"),
        ("Change currency", "d"),
        ("Brand new item here ok", "e"),
    ]
    _write(tmp_path / "eval.jsonl", evals)
    ingest(catalog, [tmp_path / "eval.jsonl"], IngestOptions(eval_set="heldout"))
    ids = {r["prompt"]: r["record_id"] for r in catalog.query("SELECT record_id, prompt FROM records")}
    return {name: ids[prompt] for name, prompt in planted.items()} | {
        "eval_long": ids[LONG_EVAL],
        "eval_mid": ids[MID_EVAL],
        "eval_short": ids[SHORT_EVAL],
    }


def test_flags_exactly_the_leaks_and_stores_hits(catalog: Catalog, leaks: dict[str, str]) -> None:
    result = run_scan(catalog, ["contamination"])
    summary = result.checks["contamination"]
    assert summary["eval_items"] == 5 and summary["eval_items_too_short"] == 1  # 'Change currency'
    findings = {r["record_id"]: r for r in catalog.query("SELECT * FROM findings WHERE check_name = 'contamination'")}
    flagged = {rid for rid, f in findings.items() if f["flagged"]}
    assert flagged == {leaks["long_leak"], leaks["mid_leak"], leaks["short_leak"]}
    assert findings[leaks["long_leak"]]["score"] == 1.0
    assert 0.0 < findings[leaks["long_partial"]]["score"] < 0.8  # half of the 13-grams
    assert 0.0 < findings[leaks["short_inside"]]["score"] < 0.8  # a phrase in a longer prompt
    assert findings[leaks["unrelated"]]["score"] == 0.0
    view = catalog.query("SELECT record_id, eval_item, method, overlap FROM contamination ORDER BY method")
    assert {(v["record_id"], v["eval_item"], v["method"], v["overlap"]) for v in view} == {
        (leaks["long_leak"], leaks["eval_long"], "ngram13", 1.0),
        (leaks["mid_leak"], leaks["eval_mid"], "ngram8", round(11 / 12, 6)),  # item words / training words
        (leaks["short_leak"], leaks["eval_short"], "full_prompt", 1.0),
    }


def test_near_dup_eval_hits_appear_in_the_view_as_minhash(catalog: Catalog, leaks: dict[str, str]) -> None:
    run_scan(catalog, ["contamination", "near_dup_eval"], {"near_dup_eval": {"scope": "prompt", "threshold": 0.3}})
    methods = {r["method"] for r in catalog.query("SELECT DISTINCT method FROM contamination")}
    assert "minhash" in methods and "ngram13" in methods


def test_no_eval_set_is_an_all_zero_no_op(tmp_path: Path, catalog: Catalog) -> None:
    _write(tmp_path / "train.jsonl", [("one question here", "a"), ("another question", "b")])
    ingest(catalog, [tmp_path / "train.jsonl"], IngestOptions(name="train"))
    result = run_scan(catalog, ["contamination"])
    assert "no eval set registered" in result.checks["contamination"]["note"]
    assert catalog.scalar("SELECT count(*) FROM findings WHERE score > 0 OR flagged") == 0
    assert catalog.scalar("SELECT count(*) FROM contamination_hits") == 0


def test_template_shared_by_eval_and_train_is_boilerplate() -> None:
    """When the eval set uses the same prompt template, the template's n-grams do not make everything a leak."""
    items = [Reference(f"e{i}", TEMPLATE.format(f"eval query number {i} is about topic {i}"), "s") for i in range(30)]
    index = EvalIndex(items, NgramContaminationConfig())
    assert index.templates.words == (18, 0)  # the template and "eval query number", shared by all 30
    texts = [TEMPLATE.format("a completely different training query about cards"), items[4].text]
    rows, item_rows, _, overlap, _ = overlaps(texts, index, NgramContaminationConfig())
    best = {int(r): float(o) for r, i, o in zip(rows, item_rows, overlap, strict=True) if int(i) == 4}
    assert best.get(0, 0.0) == 0.0 and best[1] == 1.0


def test_odd_records_do_not_break_the_check(catalog: Catalog, leaks: dict[str, str]) -> None:
    odd = [
        ScanRecord(rid, prompt, "", None, KeepRank(1, 0.0, ("t", 0, 0), rid))
        for rid, prompt in [("empty", ""), ("zh", "我的包裹在哪里"), ("emoji", "🎉🎉"), ("big", "word " * 200_000)]
    ]
    out = check_ngram_contamination(odd, CheckContext(catalog, NgramContaminationConfig()))
    assert [(f.record_id, f.score, f.flagged) for f in out.findings] == [(r.record_id, 0.0, False) for r in odd]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="short_ngram"):
        NgramContaminationConfig(ngram=5, short_ngram=8)


@pytest.mark.slow
def test_scales_to_10k_train_by_3k_eval() -> None:
    words = [f"w{i}" for i in range(5000)]
    items = [
        Reference(f"e{i}", " ".join(words[(i * 7 + k) % 5000] for k in range(6 + i % 20)), "s") for i in range(3000)
    ]
    texts = [" ".join(words[(j * 13 + k) % 5000] for k in range(10 + j % 40)) for j in range(10_000)]
    started = time.monotonic()
    index = EvalIndex(items, NgramContaminationConfig())
    overlaps(texts, index, NgramContaminationConfig())
    assert time.monotonic() - started < 30  # about 2 s on a quiet machine
