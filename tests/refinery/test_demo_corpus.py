"""The demo corpus: planted counts must be exact, because the demo compares the pipeline's findings to them.

The files are parsed back here with json and csv alone, never with Refinery's ingest, so a bug in ingest
cannot hide a bug in the corpus (or the other way round).
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from refinery.demo_corpus import DemoCorpus, dedup_key, write_demo_corpus

STRING_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"')  # a JSON string literal, escapes included
BROKEN = ("malformed_json", "invalid_utf8", "empty_response", "bad_role_order", "missing_messages")


def classify(raw: bytes) -> tuple[str, dict[str, Any] | None]:
    """Which broken kind a train line is, or "ok" with its parsed object; each line is exactly one kind."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8", None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return "malformed_json", None
    if not isinstance(obj, dict) or "messages" not in obj:
        return "missing_messages", None
    if [m["role"] for m in obj["messages"]] != ["user", "assistant"]:
        return "bad_role_order", None
    if obj["messages"][1]["content"] == "":
        return "empty_response", None
    return "ok", obj


def parse(corpus: DemoCorpus) -> tuple[Counter[str], list[tuple[bytes, str, str]], list[tuple[str, str]]]:
    raw_lines = corpus.train_path.read_bytes().split(b"\n")
    assert raw_lines[-1] == b""
    kinds: Counter[str] = Counter()
    valid: list[tuple[bytes, str, str]] = []
    for raw in raw_lines[:-1]:
        kind, obj = classify(raw)
        kinds[kind] += 1
        if obj is not None:
            valid.append((raw, obj["messages"][0]["content"], obj["messages"][1]["content"]))
    with corpus.test_path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["text", "category"]
        test = [(text, category) for text, category in reader]
    return kinds, valid, test


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> DemoCorpus:
    return write_demo_corpus(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def parsed(corpus: DemoCorpus) -> tuple[Counter[str], list[tuple[bytes, str, str]], list[tuple[str, str]]]:
    return parse(corpus)


def test_defaults_have_the_promised_shape(corpus: DemoCorpus) -> None:
    assert 12 <= len(corpus.labels) <= 16
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", label) for label in corpus.labels)
    assert len(corpus.train_path.read_bytes().split(b"\n")) - 1 == 3000
    p = corpus.planted
    for kind in ("exact_repeats", "normalized_duplicates", "conflicting_labels"):
        assert 0.01 * 3000 <= p[kind] <= 0.02 * 3000, kind
    assert all(5 <= p[kind] <= 10 for kind in BROKEN)
    assert p["contaminated_test"] == 5


def test_broken_rows_are_counted_exactly(corpus: DemoCorpus, parsed: Any) -> None:
    kinds, _, _ = parsed
    for kind in BROKEN:
        assert kinds[kind] == corpus.planted[kind], kind


def test_duplicates_and_conflicts_are_counted_exactly(corpus: DemoCorpus, parsed: Any) -> None:
    _, valid, _ = parsed
    labels = set(corpus.labels)
    assert {label for _, _, label in valid} <= labels
    distinct = {raw: (query, label) for raw, query, label in valid}
    assert len(valid) - len(distinct) == corpus.planted["exact_repeats"]
    # Distinct lines never share their messages: the only byte-level duplicates are whole repeated lines.
    assert len(set(distinct.values())) == len(distinct)

    by_key: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for query, label in distinct.values():
        by_key[dedup_key(query)].append((query, label))
    conflicts = [group for group in by_key.values() if len({label for _, label in group}) > 1]
    assert len(conflicts) == corpus.planted["conflicting_labels"]
    for group in conflicts:  # a conflict is the very same query with two labels, nothing else
        assert len(group) == 2 and group[0][0] == group[1][0]
    same_label_groups = [group for group in by_key.values() if len({label for _, label in group}) == 1]
    variants = sum(len(group) - 1 for group in same_label_groups)
    assert variants == corpus.planted["normalized_duplicates"]
    for group in same_label_groups:
        if len(group) > 1:
            assert len({q for q, _ in group}) == len(group)  # truly different strings...
            assert len({q.lower().replace("  ", " ").rstrip(".?! ") for q, _ in group}) == 1  # ...only in form


def test_test_split_is_held_out_except_the_planted_contamination(corpus: DemoCorpus, parsed: Any) -> None:
    _, valid, test = parsed
    assert len(test) == 400
    assert {category for _, category in test} == set(corpus.labels)
    assert len({dedup_key(text) for text, _ in test}) == len(test)
    train_exact = {(query, label) for _, query, label in valid}
    copies = [row for row in test if row in train_exact]
    assert len(copies) == corpus.planted["contaminated_test"]
    # No fresh test query appears in any train line, broken ones included, even after normalisation. The label
    # names are left out: normalisation turns "card_lost" into "card lost", which is also a (held-out) query.
    labels = set(corpus.labels)
    train_strings = set()
    for line in corpus.train_path.read_bytes().decode("utf-8", errors="replace").splitlines():
        for token in STRING_TOKEN.findall(line):
            if token in labels:
                continue
            try:
                train_strings.add(dedup_key(json.loads(f'"{token}"')))
            except json.JSONDecodeError:
                continue
    leaked = [row for row in test if dedup_key(row[0]) in train_strings]
    assert sorted(leaked) == sorted(copies)


def test_queries_look_like_real_customers(corpus: DemoCorpus, parsed: Any) -> None:
    _, valid, test = parsed
    queries = [query for _, query, _ in valid] + [text for text, _ in test]
    words = [len(q.split()) for q in queries]
    assert min(words) <= 3 and max(words) >= 25
    assert sum(bool(re.search(r"\d", q)) for q in queries) > 0.05 * len(queries)
    assert sum(q == q.lower() for q in queries) > 0.05 * len(queries)  # typed in a hurry
    assert sum(bool(re.search(r"[.?!] [A-Za-z]", q)) for q in queries) > 0.2 * len(queries)  # two sentences
    assert all(q == q.strip() and "\n" not in q and q for q in queries)
    per_label = Counter(label for _, _, label in valid)
    assert min(per_label.values()) > 150


def test_phrase_banks_hold_several_hundred_forms_per_intent(tmp_path: Path) -> None:
    big = write_demo_corpus(tmp_path, n_train=9000, n_test=1400)  # raises if a bank runs dry
    _, valid, _ = parse(big)
    per_label = Counter(label for _, _, label in valid)
    assert min(per_label.values()) >= 600


def test_same_seed_same_bytes_other_seed_other_corpus(tmp_path: Path) -> None:
    a = write_demo_corpus(tmp_path / "a", n_train=500, n_test=60, seed=3)
    b = write_demo_corpus(tmp_path / "b", n_train=500, n_test=60, seed=3)
    c = write_demo_corpus(tmp_path / "c", n_train=500, n_test=60, seed=4)
    assert a.train_path.read_bytes() == b.train_path.read_bytes()
    assert a.test_path.read_bytes() == b.test_path.read_bytes()
    assert a.train_path.read_bytes() != c.train_path.read_bytes()


@pytest.mark.parametrize(("n_train", "n_test", "seed"), [(200, 20, 1), (500, 60, 11), (1234, 150, 99)])
def test_planted_counts_are_exact_at_any_size(tmp_path: Path, n_train: int, n_test: int, seed: int) -> None:
    corpus = write_demo_corpus(tmp_path, n_train=n_train, n_test=n_test, seed=seed)
    kinds, valid, test = parse(corpus)
    assert sum(kinds.values()) == n_train and len(test) == n_test
    assert all(kinds[kind] == corpus.planted[kind] for kind in BROKEN)
    assert len(valid) - len({raw for raw, _, _ in valid}) == corpus.planted["exact_repeats"]
    train_exact = {(query, label) for _, query, label in valid}
    assert sum(row in train_exact for row in test) == corpus.planted["contaminated_test"]


def test_too_small_a_corpus_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_train"):
        write_demo_corpus(tmp_path, n_train=50)
    with pytest.raises(ValueError, match="n_test"):
        write_demo_corpus(tmp_path, n_test=10)


def test_readme_states_every_planted_count(corpus: DemoCorpus) -> None:
    readme = (corpus.train_path.parent / "README.md").read_text(encoding="utf-8")
    for kind, count in corpus.planted.items():
        assert f"| `{kind}` | {count} |" in readme
    assert all(label in readme for label in corpus.labels)


def test_generation_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    write_demo_corpus(tmp_path)
    assert time.perf_counter() - start < 1.0
