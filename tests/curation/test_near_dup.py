"""Near-duplicate engine: shingling, MinHash, LSH, verification, clustering, and the scan check end to end."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import hypothesis
import numpy as np
import pytest

from curation.checks import ScanError, run_scan
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.similarity.exact import KeepRank
from curation.similarity.lsh import band_keys, candidate_pairs, optimal_params
from curation.similarity.minhash import MinHasher, MinHashParams, estimate_jaccard
from curation.similarity.near_dup import NearDupConfig, find_near_duplicates
from curation.similarity.shingles import exact_jaccard, shingle_batch, tokens
from schemas.catalog import Catalog
from tests.support.require import require_module
from tests.support.texts import mutate, random_text

ROOT = Path(__file__).resolve().parents[2]


def token_jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard computed independently of the hashing path: on tuples of normalised tokens."""

    def grams(text: str) -> set[tuple[str, ...]]:
        toks = tokens(text)
        if not toks:
            return set()
        if len(toks) < n:
            return {tuple(toks)}
        return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb) if ga and gb else 0.0


def ranks_for(ids: list[str]) -> dict[str, KeepRank]:
    return {rid: KeepRank(1, 0.0, ("2026-01-01T00:00:00.000000", i, 0), rid) for i, rid in enumerate(ids)}


def _chat(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


# --- shingling and bad input -------------------------------------------------------------------------------


def test_normalisation_tokens_for_words_cjk_thai_and_emoji() -> None:
    assert tokens("Hello, WORLD!  it's") == ["hello", "world", "it", "s"]
    assert tokens("我爱北京。") == ["我", "爱", "北", "京"]  # no spaces: one token per character
    assert tokens("สวัสดี") == ["ส", "วั", "ส", "ดี"]  # Thai: combining vowels stay on their consonant
    assert tokens("😀😀 ❤️") == ["😀", "😀", "❤️"]  # emoji are tokens (with their variation selector)
    assert tokens("   \t\n ") == [] and tokens("?!...") == []


def test_empty_whitespace_short_and_emoji_texts_have_defined_shingles() -> None:
    batch = shingle_batch(["", "   ", "?!", "hello world", "Hello,  world!", "😀😀😀", "😀 😀 😀"])
    assert batch.counts.tolist() == [0, 0, 0, 1, 1, 1, 1]  # shorter than the shingle size: the whole text
    sets = batch.sets()
    assert sets[3] == sets[4] and sets[5] == sets[6]
    assert exact_jaccard(sets[0], sets[1]) == 0.0  # empty texts duplicate nothing, not even each other


def test_shingle_hashes_do_not_depend_on_the_batch_or_python_hash_seed() -> None:
    texts = ["the quick brown fox jumps over the lazy dog", "我爱北京天安门", "a b c d e f"]
    alone = [shingle_batch([t]).of(0).tolist() for t in texts]
    together = shingle_batch(texts)
    assert [together.of(i).tolist() for i in range(3)] == alone
    code = (
        "from curation.similarity.shingles import shingle_batch; "
        "print(shingle_batch(['the quick brown fox jumps over']).hashes.tolist())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("0", "1", "12345")
    }
    assert len(outs) == 1
    # golden values: a change here invalidates every stored signature (bump SCHEME/NORMALISATION instead)
    assert shingle_batch(["the quick brown fox jumps over"]).hashes.tolist() == json.loads(outs.pop())


def test_chinese_and_thai_near_duplicates_use_character_ngrams() -> None:
    zh_a = "今天天气很好，我们一起去公园散步吧，然后去吃午饭，下午再回家休息。"
    zh_b = "今天天气很好，我们一起去公园散步吧，然后去吃午饭，下午再回家睡觉。"
    th_a = "วันนี้อากาศดีมากเราไปเดินเล่นที่สวนสาธารณะกันเถอะแล้วไปกินข้าวกลางวัน"
    th_b = "วันนี้อากาศดีมากเราไปเดินเล่นที่สวนสาธารณะกันเถอะแล้วไปกินข้าวเย็น"
    texts = [zh_a, zh_b, th_a, th_b, "completely different english text about banking cards"]
    ids = [f"rec_{i}" for i in range(len(texts))]
    result = find_near_duplicates(ids, texts, ranks_for(ids), NearDupConfig(threshold=0.7))
    pairs = {(a, b) for a, b, _ in result.pairs}
    assert pairs == {("rec_0", "rec_1"), ("rec_2", "rec_3")}
    for a, b, similarity in result.pairs:
        assert similarity == pytest.approx(token_jaccard(texts[int(a[4:])], texts[int(b[4:])]))


@pytest.mark.slow
def test_a_single_5mb_record_is_sketched_and_matched() -> None:
    rng = random.Random(5)
    big = random_text(rng, 900_000)  # about 5 MB
    assert len(big.encode()) > 5_000_000
    texts = [big, big[: len(big) // 2], "a short unrelated text about cards"]
    sketches = MinHasher().sketch(texts)
    assert sketches.n_shingles[0] == 900_000 - 4
    estimate = estimate_jaccard(sketches.signatures[0], sketches.signatures[1])
    assert abs(estimate - 0.5) < 0.15
    ids = ["rec_a", "rec_b", "rec_c"]
    result = find_near_duplicates(ids, texts, ranks_for(ids), NearDupConfig(threshold=0.4))
    assert [(a, b) for a, b, _ in result.pairs] == [("rec_a", "rec_b")]


# --- MinHash and LSH ---------------------------------------------------------------------------------------


def test_estimates_are_unbiased_over_many_random_pairs() -> None:
    rng = random.Random(7)
    hasher = MinHasher()
    errors = []
    for _ in range(400):
        a = random_text(rng, rng.randint(6, 120))
        b = mutate(rng, a, rng.randint(0, len(a.split()) // 2))
        batch = shingle_batch([a, b])
        sa, sb = batch.sets()
        sigs = hasher.signatures(batch)
        errors.append(estimate_jaccard(sigs[0], sigs[1]) - exact_jaccard(sa, sb))
    mean, se = float(np.mean(errors)), float(np.std(errors) / np.sqrt(len(errors)))
    assert abs(mean) < max(4 * se, 0.003), (mean, se)
    assert float(np.std(errors)) < 0.05  # about sqrt(J(1-J)/128) at most 0.044


def test_optimal_params_match_datasketch() -> None:
    datasketch_lsh = require_module("datasketch.lsh", "pip install -e '.[data]'")
    for threshold in (0.5, 0.7, 0.9):
        for fp in (0.5, 0.1):
            expected = datasketch_lsh._optimal_param(threshold, 128, fp, 1 - fp)
            assert optimal_params(threshold, 128, fp, 1 - fp) == expected


def test_band_join_finds_exactly_the_pairs_sharing_a_band() -> None:
    rng = np.random.default_rng(3)
    sigs = rng.integers(0, 4, size=(60, 8), dtype=np.uint32)  # small alphabet: many shared bands
    left, right = candidate_pairs(sigs, bands=4, rows=2, window=1000)
    keys = band_keys(sigs, 4, 2)
    brute = {(i, j) for i in range(60) for j in range(i + 1, 60) if (keys[i] == keys[j]).any()}
    assert set(zip(left.tolist(), right.tolist(), strict=True)) == brute


# --- engine: verification, clusters, determinism -----------------------------------------------------------


def test_planted_near_duplicates_with_known_jaccard() -> None:
    rng = random.Random(11)
    base = random_text(rng, 40)
    words = base.split()
    one_edit = " ".join([*words[:20], "zzz", *words[21:]])  # 5 shingles change: J = 31 / 41
    texts = [base, one_edit, random_text(rng, 40), random_text(rng, 40)]
    ids = ["rec_b", "rec_a", "rec_c", "rec_d"]
    ranks = ranks_for(ids)  # rec_b ingested first
    result = find_near_duplicates(ids, texts, ranks, NearDupConfig(threshold=0.7))
    assert len(result.clusters) == 1
    cluster = result.clusters[0]
    assert cluster.kept == "rec_b" and cluster.members == ("rec_a", "rec_b")
    assert cluster.keep_reason == "earliest ingest"
    assert cluster.similarity_of("rec_a") == pytest.approx(31 / 41) == pytest.approx(token_jaccard(base, one_edit))


def test_verified_pairs_are_never_below_the_threshold_and_are_exact() -> None:
    st = hypothesis.strategies

    @hypothesis.given(seed=st.integers(0, 10_000), threshold=st.floats(0.3, 0.95))
    @hypothesis.settings(max_examples=25, deadline=None)
    def prop(seed: int, threshold: float) -> None:
        rng = random.Random(seed)
        bases = [random_text(rng, rng.randint(3, 30)) for _ in range(6)]
        texts = [mutate(rng, rng.choice(bases), rng.randint(0, 4)) for _ in range(30)]
        ids = [f"rec_{i:03d}" for i in range(len(texts))]
        result = find_near_duplicates(ids, texts, ranks_for(ids), NearDupConfig(threshold=threshold))
        for a, b, similarity in result.pairs:
            assert similarity >= threshold
            assert similarity == pytest.approx(token_jaccard(texts[int(a[4:])], texts[int(b[4:])]))

    prop()


def test_kept_members_do_not_depend_on_input_order() -> None:
    st = hypothesis.strategies
    rng = random.Random(2)
    bases = [random_text(rng, 25) for _ in range(5)]
    texts = [mutate(rng, rng.choice(bases), rng.randint(0, 2)) for _ in range(40)]
    ids = [f"rec_{i:03d}" for i in range(len(texts))]
    ranks = {rid: KeepRank(1, -rng.random(), ("t", 0, 0), rid) for rid in ids}
    reference = find_near_duplicates(ids, texts, ranks).clusters
    assert reference

    @hypothesis.given(perm=st.permutations(list(range(len(texts)))))
    @hypothesis.settings(max_examples=20, deadline=None)
    def prop(perm: list[int]) -> None:
        shuffled = find_near_duplicates([ids[i] for i in perm], [texts[i] for i in perm], ranks).clusters
        assert shuffled == reference

    prop()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="bands and rows together"):
        NearDupConfig(bands=4)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        NearDupConfig(bands=20, rows=10)
    with pytest.raises(ValueError, match="threshold\n  Input should be less than or equal to 1"):
        NearDupConfig(threshold=1.5)
    with pytest.raises(ValueError, match="treshold\n  Extra inputs are not permitted"):
        NearDupConfig.model_validate({"treshold": 0.8})
    with pytest.raises(ValueError, match=r"num_perm must be in \[2, 4096\], got 1"):
        MinHashParams(num_perm=1)


# --- the scan check, end to end through the catalog --------------------------------------------------------


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, list[str]]:
    rng = random.Random(1)
    first = [_chat(random_text(rng, 30), f"label_{i % 3}") for i in range(40)]
    base = random_text(rng, 30)
    first += [_chat(base, "same answer"), _chat(" ".join(["zzz", *base.split()[1:]]), "same answer")]
    first += [_chat("?!", "punctuation-only prompt"), _chat("hi", "short")]
    second = [_chat(random_text(rng, 30), "x") for _ in range(8)]
    for i in (3, 4):  # near duplicates of two first-batch records: first word changed, same answer
        words = json.loads(first[i])["messages"][0]["content"].split()
        second.append(_chat(" ".join(["zzz", *words[1:]]), f"label_{i % 3}"))
    return {"first": first, "second": second}


def _ingest(catalog: Catalog, tmp_path: Path, name: str, lines: list[str]) -> None:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ingest(catalog, [path], IngestOptions(name=name))


def _results(catalog: Catalog, scan_id: str) -> tuple[list[tuple], list[tuple]]:
    members = catalog.query(
        "SELECT check_name, cluster_id, record_id, kept_record_id, is_kept, similarity, keep_reason "
        "FROM duplicate_members WHERE scan_id = ? ORDER BY ALL",
        [scan_id],
    )
    findings = catalog.query(
        "SELECT record_id, check_name, score, flagged, reason, details_json FROM findings WHERE scan_id = ? "
        "ORDER BY ALL",
        [scan_id],
    )
    return [tuple(r.values()) for r in members], [tuple(r.values()) for r in findings]


def test_scan_flags_planted_pair_with_true_similarity(catalog: Catalog, tmp_path: Path, corpus: dict) -> None:
    _ingest(catalog, tmp_path, "first", corpus["first"])
    result = run_scan(catalog, ["exact", "near_dup"], {"near_dup": {"threshold": 0.7}})
    summary = result.to_json()["near_dup"]
    assert summary["clusters"] == 1 and summary["duplicates"] == 1 and summary["sketched"] == 44
    rows = catalog.query("SELECT * FROM duplicate_clusters WHERE check_name = 'near_dup' ORDER BY is_kept")
    removed, kept = rows
    assert removed["prompt"].startswith("zzz") and removed["kept_record_id"] == kept["record_id"]
    assert removed["similarity"] == pytest.approx(
        token_jaccard(removed["prompt"] + "\n" + removed["response"], kept["prompt"] + "\n" + kept["response"])
    )
    flagged = catalog.query(
        "SELECT reason, details_json FROM findings WHERE check_name = 'near_dup' AND flagged AND scan_id = ?",
        [result.scan_id],
    )
    assert len(flagged) == 1 and kept["record_id"] in flagged[0]["reason"]
    details = json.loads(flagged[0]["details_json"])
    assert details["scope"] == "pair" and details["kept_record_id"] == kept["record_id"]
    skipped = catalog.query(
        "SELECT details_json FROM findings WHERE check_name = 'near_dup' AND details_json LIKE '%skipped%'"
    )
    assert skipped == []  # the punctuation-only prompt still has a response: the pair text is not empty
    prompt_scan = run_scan(catalog, ["near_dup"], {"near_dup": {"scope": "prompt"}})
    assert "near_dup_prompt" in prompt_scan.checks and prompt_scan.checks["near_dup_prompt"]["empty_texts"] == 1


def test_scan_config_errors_are_reported_up_front(catalog: Catalog, tmp_path: Path, corpus: dict) -> None:
    _ingest(catalog, tmp_path, "first", corpus["first"])
    with pytest.raises(ScanError, match="not among the checks run"):
        run_scan(catalog, ["exact"], {"near_dup": {"threshold": 0.8}})
    with pytest.raises(ScanError, match="config of 'near_dup'"):
        run_scan(catalog, ["near_dup"], {"near_dup": {"threshold": 2}})
    with pytest.raises(ScanError, match="takes no config"):
        run_scan(catalog, ["exact"], {"exact": {"threshold": 0.8}})
    with pytest.raises(ScanError, match="requested twice"):
        run_scan(catalog, ["near_dup", "near_dup_prompt"], {"near_dup": {"scope": "prompt"}})
    a = run_scan(catalog, ["near_dup"])
    b = run_scan(catalog, ["near_dup"], {"near_dup": {"threshold": 0.7}})
    c = run_scan(catalog, ["near_dup"], {"near_dup": {"threshold": 0.8}})
    assert a.scan_id == b.scan_id != c.scan_id and b.reused


def test_incremental_rescan_sketches_only_new_records_and_equals_a_full_scan(tmp_path: Path, corpus: dict) -> None:
    inc = Catalog(tmp_path / "inc" / "catalog.duckdb")
    inc.migrate()
    _ingest(inc, tmp_path, "first", corpus["first"])
    run_scan(inc, ["near_dup"])
    _ingest(inc, tmp_path, "second", corpus["second"])
    rescan = run_scan(inc, ["near_dup"], {"near_dup": {"threshold": 0.7}})
    assert rescan.checks["near_dup"]["sketched"] == 10 and rescan.checks["near_dup"]["signatures_reused"] == 44

    full = Catalog(tmp_path / "full" / "catalog.duckdb")
    full.migrate()
    _ingest(full, tmp_path, "first", corpus["first"])
    _ingest(full, tmp_path, "second", corpus["second"])
    fresh = run_scan(full, ["near_dup"])
    assert fresh.checks["near_dup"]["sketched"] == 54
    assert fresh.scan_id == rescan.scan_id
    assert _results(inc, rescan.scan_id) == _results(full, fresh.scan_id)
    assert rescan.checks["near_dup"]["clusters"] == 3


def test_a_scan_killed_while_storing_signatures_is_finished_by_a_rerun(
    catalog: Catalog, tmp_path: Path, corpus: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import curation.similarity.minhash_store as store

    _ingest(catalog, tmp_path, "first", corpus["first"])
    monkeypatch.setattr(store, "WRITE_CHUNK", 10)
    real_save = store.save_signatures
    calls = {"n": 0}

    def dying_save(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        real_save(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "save_signatures", dying_save)
    with pytest.raises(KeyboardInterrupt, match="killed"):
        run_scan(catalog, ["near_dup"])
    assert catalog.scalar("SELECT count(*) FROM minhash_signatures") == 20
    assert catalog.scalar("SELECT status FROM scans") == "running"
    monkeypatch.setattr(store, "save_signatures", real_save)
    result = run_scan(catalog, ["near_dup"])
    assert result.checks["near_dup"]["sketched"] == 24 and result.checks["near_dup"]["signatures_reused"] == 20
    assert catalog.scalar("SELECT count(*) FROM minhash_signatures") == 44
    assert catalog.scalar("SELECT count(*) FROM findings WHERE scan_id = ?", [result.scan_id]) == 44


def test_vectorised_verification_equals_set_jaccard() -> None:
    from curation.similarity.jaccard import ShingleSets

    rng = random.Random(9)
    bases = [random_text(rng, rng.randint(1, 60)) for _ in range(10)]
    texts = [mutate(rng, rng.choice(bases), rng.randint(0, 5)) for _ in range(80)] + ["", "?!"]
    left = np.array([rng.randrange(len(texts)) for _ in range(500)])
    right = np.array([rng.randrange(len(texts)) for _ in range(500)])
    sets = ShingleSets(texts, np.concatenate([left, right]), 5)
    expected = [exact_jaccard(*shingle_batch([texts[a], texts[b]]).sets()) for a, b in zip(left, right, strict=True)]
    assert sets.jaccard(left, right).tolist() == pytest.approx(expected, abs=0)
