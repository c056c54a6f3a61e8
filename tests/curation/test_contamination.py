"""Contamination: training records near-duplicating registered eval items (the ``near_dup_eval`` check) or the
members of a frozen snapshot (:func:`check_against_snapshot`), with planted fixtures of known Jaccard."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from curation.checks import ScanError, run_scan
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.ingest.templates import TEMPLATES
from curation.similarity.eval_match import ContaminationConfig, ContaminationError, Match, cross_candidate_pairs
from curation.similarity.lsh import band_keys
from curation.similarity.minhash import MinHasher
from curation.similarity.shingles import shingle_batch, tokens
from curation.similarity.template_strip import Templates, content_texts, find_templates, words_of
from curation.snapshot import SnapshotPolicy, create_snapshot
from curation.snapshot.contamination import check_against_snapshot
from schemas.catalog import Catalog
from tests.curation.test_near_dup import _chat, random_text, token_jaccard


def _write(tmp_path: Path, name: str, rows: list[str]) -> Path:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _ingest(
    catalog: Catalog,
    tmp_path: Path,
    name: str,
    rows: list[str],
    eval_set: str | None = None,
    template: str | None = None,
) -> str:
    options = IngestOptions(name=name, eval_set=eval_set, template=template)
    return ingest(catalog, [_write(tmp_path, name, rows)], options).batch_id


def _id_of(catalog: Catalog, prompt: str, response: str | None = None) -> str:
    sql = "SELECT record_id FROM records WHERE prompt = ?" + ("" if response is None else " AND response = ?")
    rows = catalog.query(sql, [prompt] if response is None else [prompt, response])
    assert len(rows) == 1, rows
    return str(rows[0]["record_id"])


def _ask(prompt: str) -> str:
    """A prompt-only eval row."""
    return json.dumps({"messages": [{"role": "user", "content": prompt}]})


def _replace_word(text: str, index: int, word: str) -> str:
    words = text.split()
    words[index] = word
    return " ".join(words)


@pytest.fixture
def planted(catalog: Catalog, tmp_path: Path) -> dict[str, str]:
    """Eval sets ``qa`` (q0..q3) and ``zz`` (q0 again, q4); training records with known relations to them."""
    rng = random.Random(7)
    q = [random_text(rng, 30) for _ in range(5)]
    near = _replace_word(q[1], 15, "qqq")  # one word in the middle: Jaccard 21/31 = 0.677
    far = " ".join(["aaa", "bbb", "ccc", *q[2].split()[3:12], "ddd", *q[2].split()[13:]])  # well below 0.6
    both = _chat(q[3], "the answer")  # the same chat in a training batch and in eval set qa: one record
    train = [_chat(random_text(rng, 30), f"unrelated {i}") for i in range(20)]
    train += [_chat(q[0], "copied prompt"), _chat(near, "near prompt"), _chat(far, "far prompt"), both]
    train += [_chat("?!", "punctuation-only prompt")]
    _ingest(catalog, tmp_path, "train", train)
    _ingest(catalog, tmp_path, "qa", [_ask(q[0]), _ask(q[1]), _ask(q[2]), both], "qa")
    _ingest(catalog, tmp_path, "zz", [_ask(q[0]), _ask(q[4])], "zz")
    return {
        "q0": _id_of(catalog, q[0], ""),
        "q1": _id_of(catalog, q[1], ""),
        "copy": _id_of(catalog, q[0], "copied prompt"),
        "near": _id_of(catalog, near),
        "far": _id_of(catalog, far),
        "both": _id_of(catalog, q[3]),
        "empty": _id_of(catalog, "?!"),
        "near_jaccard": str(token_jaccard(near, q[1])),
        "far_jaccard": str(token_jaccard(far, q[2])),
    }


def _findings(catalog: Catalog, scan_id: str) -> dict[str, dict]:
    rows = catalog.query(
        "SELECT record_id, score, flagged, reason, details_json FROM findings "
        "WHERE scan_id = ? AND check_name = 'near_dup_eval'",
        [scan_id],
    )
    return {r["record_id"]: {**r, "details": json.loads(r["details_json"] or "null")} for r in rows}


def test_near_dup_eval_flags_exactly_the_planted_records(catalog: Catalog, planted: dict[str, str]) -> None:
    result = run_scan(catalog, ["near_dup_eval"])
    summary = result.checks["near_dup_eval"]
    assert summary["contaminated"] == 3 and summary["flagged"] == 3
    assert summary["eval_sets"] == 2 and summary["eval_items"] == 6 and summary["scope"] == "prompt"
    findings = _findings(catalog, result.scan_id)
    assert len(findings) == 25  # one per training record, none for eval-only records
    assert planted["q0"] not in findings and planted["q1"] not in findings
    flagged = {rid: f for rid, f in findings.items() if f["flagged"]}
    assert set(flagged) == {planted["copy"], planted["near"], planted["both"]}

    copy = flagged[planted["copy"]]  # its prompt is q0, in both eval sets: tie broken by the set name
    assert copy["score"] == 1.0
    assert copy["details"] == {
        "eval_set": "qa",
        "eval_record_id": planted["q0"],
        "similarity": 1.0,
        "scope": "prompt",
        "template_stripped": False,  # random prompts: no shared template
        "eval_matches": 2,
    }
    assert planted["q0"] in copy["reason"] and "'qa'" in copy["reason"]

    near = flagged[planted["near"]]
    expected = float(planted["near_jaccard"])
    assert 0.6 <= expected < 0.7  # the case the 0.6 default exists for
    assert near["score"] == pytest.approx(expected)
    assert near["details"]["eval_record_id"] == planted["q1"] and near["details"]["eval_set"] == "qa"
    assert near["details"]["similarity"] == pytest.approx(expected, abs=1e-6)

    both = flagged[planted["both"]]  # the training record is itself an eval item
    assert both["score"] == 1.0 and both["details"]["eval_record_id"] == planted["both"]

    assert float(planted["far_jaccard"]) < 0.6
    assert findings[planted["far"]]["score"] == 0.0 and not findings[planted["far"]]["flagged"]
    assert findings[planted["empty"]]["details"]["skipped"].startswith("no shingles")
    unrelated = [f for rid, f in findings.items() if rid not in flagged and rid != planted["far"]]
    assert len(unrelated) == 21 and all(f["score"] == 0.0 and f["reason"] is None for f in unrelated)


def test_thresholds_scopes_and_eval_set_filter(catalog: Catalog, planted: dict[str, str]) -> None:
    strict = run_scan(catalog, ["near_dup_eval"], {"near_dup_eval": {"threshold": 0.7}})
    flagged = {rid for rid, f in _findings(catalog, strict.scan_id).items() if f["flagged"]}
    assert flagged == {planted["copy"], planted["both"]}
    only_zz = run_scan(catalog, ["near_dup_eval"], {"near_dup_eval": {"eval_sets": ["zz"]}})
    findings = _findings(catalog, only_zz.scan_id)
    assert {rid for rid, f in findings.items() if f["flagged"]} == {planted["copy"]}
    assert findings[planted["copy"]]["details"]["eval_set"] == "zz"
    pair = run_scan(catalog, ["near_dup_eval"], {"near_dup_eval": {"scope": "pair"}})
    findings = _findings(catalog, pair.scan_id)
    assert {rid for rid, f in findings.items() if f["flagged"]} == {planted["copy"], planted["near"], planted["both"]}
    assert 0.9 < findings[planted["copy"]]["score"] < 1.0  # 26 shared shingles of 28: the response adds two
    assert findings[planted["both"]]["score"] == 1.0
    with pytest.raises(ScanError, match="config of 'near_dup_eval'"):
        run_scan(catalog, ["near_dup_eval"], {"near_dup_eval": {"threshold": 0}})


def test_signatures_are_shared_with_near_dup_and_a_new_eval_set_redoes_the_scan(
    catalog: Catalog, tmp_path: Path, planted: dict[str, str]
) -> None:
    prompt_scan = run_scan(catalog, ["near_dup"], {"near_dup": {"scope": "prompt"}})
    assert prompt_scan.checks["near_dup_prompt"]["sketched"] == 25
    first = run_scan(catalog, ["near_dup_eval"])
    stats = first.checks["near_dup_eval"]
    assert stats["sketched"] == 4 and stats["signatures_reused"] == 25  # only eval-only records: q0 q1 q2 q4
    assert run_scan(catalog, ["near_dup_eval"]).reused
    far_prompt = catalog.scalar("SELECT prompt FROM records WHERE record_id = ?", [planted["far"]])
    _ingest(catalog, tmp_path, "late", [_ask(far_prompt)], "late")
    again = run_scan(catalog, ["near_dup_eval"])
    assert not again.reused and again.scan_id != first.scan_id
    assert again.checks["near_dup_eval"]["sketched"] == 1  # the new eval item only (a prompt-only record)
    assert again.checks["near_dup_eval"]["signatures_reused"] == 29
    findings = _findings(catalog, again.scan_id)
    assert findings[planted["far"]]["flagged"] and findings[planted["far"]]["details"]["eval_set"] == "late"
    assert (
        catalog.scalar(
            "SELECT count(*) FROM (SELECT params_hash, record_id FROM minhash_signatures "
            "GROUP BY ALL HAVING count(*) > 1)"
        )
        == 0
    )


def test_no_eval_sets_flags_nothing(catalog: Catalog, tmp_path: Path) -> None:
    rng = random.Random(3)
    _ingest(catalog, tmp_path, "train", [_chat(random_text(rng, 20), "x") for _ in range(5)])
    result = run_scan(catalog, ["near_dup_eval"])
    assert result.checks["near_dup_eval"]["eval_items"] == 0 and result.checks["near_dup_eval"]["flagged"] == 0


def test_cross_candidates_pair_only_across_the_two_sets() -> None:
    rng = random.Random(11)
    bases = [random_text(rng, 40) for _ in range(6)]
    query = [bases[i % 6] for i in range(12)]  # duplicates inside the query set must not pair
    reference = [bases[0], bases[3], random_text(rng, 40), ""]
    hasher = MinHasher()
    q, r = hasher.sketch(query), hasher.sketch(reference)
    left, right = cross_candidate_pairs(q.signatures, r.signatures, 16, 8, q.n_shingles > 0, r.n_shingles > 0)
    got = set(zip(left.tolist(), right.tolist(), strict=True))
    qk, rk = band_keys(q.signatures, 16, 8), band_keys(r.signatures, 16, 8)
    expected = {(i, j) for i in range(12) for j in range(3) if (qk[i] == rk[j]).any()}
    assert got == expected and {(0, 0), (6, 0), (3, 1), (9, 1)} <= got
    assert np.all(np.diff(left * 4 + right) > 0)  # sorted, unique
    capped = cross_candidate_pairs(q.signatures, r.signatures, 16, 8, q.n_shingles > 0, r.n_shingles > 0, 1)
    assert len(capped[0]) == len(left)  # every run here has one reference text


def test_check_against_snapshot(catalog: Catalog, tmp_path: Path, workspace: Path) -> None:
    rng = random.Random(21)
    frozen = [_chat(random_text(rng, 30), f"answer {i}") for i in range(15)]
    _ingest(catalog, tmp_path, "old", frozen)
    run_scan(catalog, ["exact"])
    policy = SnapshotPolicy(train_fraction=1.0, validation_fraction=0.0, test_fraction=0.0, exclude_duplicates=[])
    snapshot = create_snapshot(catalog, workspace / "snapshots", policy)
    member = json.loads(frozen[4])["messages"]
    near_prompt = _replace_word(member[0]["content"], 10, "qqq")
    new = [frozen[2], _chat(near_prompt, member[1]["content"]), _chat(random_text(rng, 30), "fresh")]
    batch_id = _ingest(catalog, tmp_path, "new", new)
    copy_id = _id_of(catalog, json.loads(frozen[2])["messages"][0]["content"])
    near_id, member_id = _id_of(catalog, near_prompt), _id_of(catalog, member[0]["content"])
    expected_near = token_jaccard(
        near_prompt + "\n" + member[1]["content"], member[0]["content"] + "\n" + member[1]["content"]
    )

    matches = check_against_snapshot(catalog, snapshot.snapshot_id, batch_id=batch_id)
    assert [(m.record_id, m.matched_record_id, m.matched_in) for m in matches] == sorted(
        [(copy_id, copy_id, "train"), (near_id, member_id, "train")]
    )
    by_id = {m.record_id: m for m in matches}
    assert by_id[copy_id].similarity == 1.0
    assert by_id[near_id].similarity == pytest.approx(expected_near)
    assert check_against_snapshot(catalog, snapshot.snapshot_id, record_ids=[near_id]) == [by_id[near_id]]
    prompt_only = check_against_snapshot(
        catalog, snapshot.snapshot_id, record_ids=[near_id], config=ContaminationConfig(threshold=0.9)
    )
    assert prompt_only == []
    assert isinstance(matches[0], Match)
    with pytest.raises(ContaminationError, match="unknown snapshot"):
        check_against_snapshot(catalog, "snap_nope", batch_id=batch_id)
    with pytest.raises(ContaminationError, match="either"):
        check_against_snapshot(catalog, snapshot.snapshot_id)
    with pytest.raises(ContaminationError, match="unknown record"):
        check_against_snapshot(catalog, snapshot.snapshot_id, record_ids=["rec_nope"])


# --- prompt templates ---------------------------------------------------------------------------------------

INTENT = TEMPLATES["intent"]  # 16 words around the message: "Identify the intent ... Customer message: {text}"
CLASSIFY = TEMPLATES["classify"]  # 10 words: "Classify the following text. ... Text: {text}"


def _short(rng: random.Random) -> str:
    """A 4-5 word message: inside the intent template, two of them share 12 of their 16-17 shingles."""
    return random_text(rng, rng.randint(4, 5))


@pytest.fixture
def templated(catalog: Catalog, tmp_path: Path) -> dict[str, str]:
    """Short training messages ingested with the intent template, like banking77 with ``--template intent``;
    eval sets ``plain`` (no template), ``intent`` (the same template) and ``classify`` (another template).

    Planted: ``copy`` (a plain eval item, in the template), ``near`` (an intent eval item's message with one word
    changed: content Jaccard 21/31), ``cross`` (a classify eval item's message, in the intent template), ``far``
    (three words changed: below 0.6) and ``empty`` (the template with no message). The 40 other training messages
    are random; whole-prompt Jaccard makes most of them near duplicates of the short intent eval items, and misses
    ``copy`` and ``cross`` (their template words are not in the eval item).
    """
    rng = random.Random(17)
    plain = [random_text(rng, 12), random_text(rng, 20), random_text(rng, 20)]
    intent = [random_text(rng, 30)] + [_short(rng) for _ in range(14)]
    classify = [random_text(rng, 14)] + [_short(rng) for _ in range(12)]
    planted = {
        "copy": plain[0],
        "near": _replace_word(intent[0], 15, "qqq"),
        "cross": classify[0],
        "far": _replace_word(_replace_word(_replace_word(intent[0], 4, "xxx"), 11, "yyy"), 22, "zzz"),
    }
    messages = [_short(rng) for _ in range(40)] + list(planted.values())
    train = [_chat(m, f"label {i % 7}") for i, m in enumerate(messages)]
    _ingest(catalog, tmp_path, "train", train, template="intent")
    _ingest(catalog, tmp_path, "empty", [_chat(INTENT.format(text=""), "label 0")])  # all template, no message
    _ingest(catalog, tmp_path, "plain", [_ask(m) for m in plain], "plain")
    _ingest(catalog, tmp_path, "intent", [_ask(m) for m in intent], "intent", "intent")
    _ingest(catalog, tmp_path, "classify", [_ask(m) for m in classify], "classify", "classify")
    ids = {name: _id_of(catalog, INTENT.format(text=m)) for name, m in planted.items()}
    return {
        **ids,
        "empty": _id_of(catalog, INTENT.format(text="").strip()),
        "eval_plain": _id_of(catalog, plain[0], ""),
        "eval_intent": _id_of(catalog, INTENT.format(text=intent[0]), ""),
        "eval_classify": _id_of(catalog, CLASSIFY.format(text=classify[0]), ""),
        "near_jaccard": str(token_jaccard(planted["near"], intent[0])),
        "far_jaccard": str(token_jaccard(planted["far"], intent[0])),
    }


def test_near_dup_eval_compares_contents_without_the_templates(catalog: Catalog, templated: dict[str, str]) -> None:
    result = run_scan(catalog, ["near_dup_eval"])
    summary = result.checks["near_dup_eval"]
    assert summary["template_words"] == [16, 0]  # the longest template stripped (intent; classify has 10 words)
    assert summary["templated_records"] == 45 and summary["templated_references"] == 28  # plain items stay whole
    assert summary["empty_texts"] == 1 and summary["eval_items"] == 31
    findings = _findings(catalog, result.scan_id)
    assert len(findings) == 45
    flagged = {rid: f for rid, f in findings.items() if f["flagged"]}
    assert set(flagged) == {templated["copy"], templated["near"], templated["cross"]}
    assert summary["contaminated"] == 3

    for name, eval_set in (("copy", "plain"), ("cross", "classify")):  # the other side has no / another template
        finding = flagged[templated[name]]
        assert finding["score"] == 1.0 and finding["details"]["eval_set"] == eval_set
        assert finding["details"]["eval_record_id"] == templated[f"eval_{eval_set}"]
        assert finding["details"]["template_stripped"] is True
        assert finding["reason"].endswith("(Jaccard 1.000, prompt content, template stripped)")
    near = flagged[templated["near"]]
    expected = float(templated["near_jaccard"])
    assert 0.6 <= expected < 0.7 and near["score"] == pytest.approx(expected)
    assert near["details"]["eval_record_id"] == templated["eval_intent"]

    assert float(templated["far_jaccard"]) < 0.6 and findings[templated["far"]]["score"] == 0.0
    assert findings[templated["empty"]]["details"]["skipped"].endswith("nothing but the prompt template")
    unrelated = [f for rid, f in findings.items() if rid not in flagged]
    assert len(unrelated) == 42 and all(f["score"] == 0.0 and f["reason"] is None for f in unrelated)


def test_whole_prompts_flag_the_template_and_miss_the_copies(catalog: Catalog, templated: dict[str, str]) -> None:
    """The defect the stripping removes, on the same fixture: ``strip_templates: false`` compares whole prompts."""
    result = run_scan(catalog, ["near_dup_eval"], {"near_dup_eval": {"strip_templates": False}})
    assert result.checks["near_dup_eval"]["template_words"] == [0, 0]
    flagged = {rid for rid, f in _findings(catalog, result.scan_id).items() if f["flagged"]}
    assert len(flagged) > 20  # random messages sharing only the template with a short intent eval item
    assert templated["copy"] not in flagged and templated["cross"] not in flagged


def test_content_signatures_are_stored_once_and_reused(catalog: Catalog, templated: dict[str, str]) -> None:
    first = run_scan(catalog, ["near_dup_eval"])
    assert first.checks["near_dup_eval"]["sketched"] == 45 + 31
    stricter = run_scan(catalog, ["near_dup_eval"], {"near_dup_eval": {"threshold": 0.9}})
    assert stricter.checks["near_dup_eval"]["sketched"] == 0
    assert stricter.checks["near_dup_eval"]["signatures_reused"] == 45 + 31
    # the 3 plain eval items keep the near_dup key; the stripped contents have their own
    keys = catalog.query("SELECT params_hash, count(*) AS n FROM minhash_signatures GROUP BY ALL ORDER BY n")
    assert [k["n"] for k in keys] == [3, 73]
    scopes = sorted(json.loads(r["params_json"])["scope"] for r in catalog.query("SELECT * FROM minhash_params"))
    assert len(scopes) == 2 and scopes[0] == "prompt" and scopes[1].startswith("prompt:content:")


def test_check_against_snapshot_strips_templates(catalog: Catalog, tmp_path: Path, workspace: Path) -> None:
    rng = random.Random(5)
    long = random_text(rng, 30)
    frozen = [_chat(_short(rng), f"label {i}") for i in range(20)] + [_chat(long, "label long")]
    _ingest(catalog, tmp_path, "old", frozen, template="intent")
    run_scan(catalog, ["exact"])
    policy = SnapshotPolicy(train_fraction=1.0, validation_fraction=0.0, test_fraction=0.0, exclude_duplicates=[])
    snapshot = create_snapshot(catalog, workspace / "snapshots", policy)
    near = _replace_word(long, 15, "qqq")  # content Jaccard 21/31
    new = [_chat(_short(rng), f"new {i}") for i in range(12)] + [_chat(near, "label long")]
    batch_id = _ingest(catalog, tmp_path, "new", new, template="intent")
    near_id, member_id = _id_of(catalog, INTENT.format(text=near)), _id_of(catalog, INTENT.format(text=long))
    prompt = ContaminationConfig(scope="prompt")

    matches = check_against_snapshot(catalog, snapshot.snapshot_id, batch_id=batch_id, config=prompt)
    assert [(m.record_id, m.matched_record_id, m.template_stripped) for m in matches] == [(near_id, member_id, True)]
    assert matches[0].similarity == pytest.approx(token_jaccard(near, long))
    assert [m.record_id for m in check_against_snapshot(catalog, snapshot.snapshot_id, batch_id=batch_id)] == [
        near_id
    ]  # the default pair scope: the label follows the message
    whole = ContaminationConfig(scope="prompt", strip_templates=False)
    unstripped = check_against_snapshot(catalog, snapshot.snapshot_id, batch_id=batch_id, config=whole)
    assert len({m.record_id for m in unstripped}) > 5 and not any(m.template_stripped for m in unstripped)


def test_content_texts_are_the_words_outside_the_template() -> None:
    templates = find_templates([INTENT.format(text=f"q{i}") for i in range(20)])
    assert templates.words == (16, 0)
    texts = [
        INTENT.format(text="Why was I charged £1, twice?!"),
        "No template here: ÉCOLE d'été",
        INTENT.format(text=""),
        "Identify the intent of my last payment",  # 4 words of the template: stripped too (>= 3)
        "Identify the card",  # 2 words: content
    ]
    content, stripped = content_texts(texts, templates)
    assert content == ["why was i charged £ 1 twice", texts[1], "", "my last payment", texts[4]]
    assert stripped.tolist() == [True, False, True, True, False]
    words = shingle_batch(texts[:1], 1)
    assert shingle_batch(content[:1], 1).hashes.tolist() == words.hashes[16:].tolist()  # the same words
    ascii_texts = ["A-B_c d\\te\\x00f", "it's 3.5%... (OK)\n\tNEXT~line", "\x00x\x7fy", "", "  ?! "]
    assert [words_of(t) for t in ascii_texts] == [tokens(t) for t in ascii_texts]
    unchanged, none = content_texts(texts, Templates())  # no template: nothing to strip
    assert unchanged == texts and not none.any()
