"""The demo corpus that `make demo` runs the whole pipeline on: a support-desk intent classification set.

The demo has to show every stage doing real work on a laptop in minutes, with no download: ingest must
quarantine something, exact-duplicate detection must find something, decontamination must catch something,
and the eval gate must have a task where a small LoRA adapter visibly beats the base model. So the corpus is
synthetic but shaped like real customer messages (varied openings, typos, order numbers, two-sentence
queries), composed from per-intent phrase banks with a seeded ``random.Random`` so that the same seed always
yields byte-identical files, and it carries an exact, known count of every defect planted in it. Those
counts are the ground truth the demo (and its tests) compare the pipeline's findings against.
"""

from __future__ import annotations

import csv
import json
import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The phrase banks (data, not code): per-intent core and follow-up sentences, greetings, sign-offs, confusable
#: labels, common misspellings and slot values. Queries are written lowercase, without final punctuation; the writer
#: adds case and punctuation per query, so one bank line yields many surface forms.
PHRASES_PATH = Path(__file__).with_name("data") / "demo_phrases.json"


def _load_phrases() -> dict[str, Any]:
    phrases: dict[str, Any] = json.loads(PHRASES_PATH.read_text(encoding="utf-8"))
    return phrases


_PHRASES = _load_phrases()
_CORES: dict[str, tuple[str, ...]] = {label: tuple(v) for label, v in _PHRASES["cores"].items()}
_FOLLOWUPS: dict[str, tuple[str, ...]] = {label: tuple(v) for label, v in _PHRASES["followups"].items()}
_OPENINGS: tuple[str, ...] = tuple(_PHRASES["openings"])
_CLOSINGS: tuple[str, ...] = tuple(_PHRASES["closings"])
# Realistic label noise: the second label a hurried annotator might pick for a query of the first.
_CONFUSABLE: dict[str, tuple[str, ...]] = {label: tuple(v) for label, v in _PHRASES["confusable"].items()}
_MISSPELLINGS: dict[str, str] = dict(_PHRASES["misspellings"])
_VALUES: dict[str, tuple[str, ...]] = {slot: tuple(v) for slot, v in _PHRASES["slot_values"].items()}
# "{slot}" fields are filled with varied values. Each function draws from the rng in a fixed order (the f-strings
# of a tuple are evaluated before the choice among them), so a seed always yields the same corpus.
_SLOTS: dict[str, Callable[[random.Random], str]] = {
    "order": lambda r: r.choice(("#", "", "no. ", "#A")) + str(r.randint(100000, 999999)),
    "amount": lambda r: r.choice(("£", "$", "€")) + r.choice((str(r.randint(5, 400)), f"{r.uniform(2, 900):.2f}")),
    "round": lambda r: str(r.choice((20, 50, 100, 200, 250, 500, 1000, 1500))),
    "when": lambda r: r.choice(
        (
            *_VALUES["when"],
            f"on {r.choice(_VALUES['weekday'])}",
            f"on {r.randint(1, 28)} {r.choice(_VALUES['month'])}",
        )
    ),
    "day": lambda r: r.choice(
        (
            r.choice(_VALUES["weekday"]),
            f"{r.randint(1, 28)} {r.choice(_VALUES['month'])}",
            f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}",
            "the weekend",
        )
    ),
    "days": lambda r: r.choice((*_VALUES["days"], f"{r.randint(3, 20)} days")),
    "last4": lambda r: f"{r.randint(0, 9999):04d}",
    "country": lambda r: r.choice(_VALUES["country"]),
    "merchant": lambda r: r.choice(_VALUES["merchant"]),
    "device": lambda r: r.choice(_VALUES["device"]),
    "cur": lambda r: r.choice(_VALUES["cur"]),
    "cur2": lambda r: r.choice(_VALUES["cur2"]),
    "street": lambda r: f"{r.randint(1, 240)} " + r.choice(_VALUES["street"]),
}
_SLOT_RE = re.compile(r"\{(\w+)\}")
_LONE_I_RE = re.compile(r"\bi\b")
_SENTENCE_START_RE = re.compile(r"([.?!] )([a-z])")
_NON_ALNUM_RE = re.compile(r"[^0-9a-z]+")

# Characters whose Windows-1252 byte is not valid UTF-8: a row exported from a spreadsheet in the wrong code page.
_CP1252_TAILS = ("It cost £{n}.", "I paid €{n}.", "It's urgent—please.", "Sent from my café.", "That’s all.")
_FOLLOWUP_PINGS = ("Hello?", "Anyone there?", "Please reply.", "Still waiting.")

BROKEN_KINDS = ("malformed_json", "invalid_utf8", "empty_response", "bad_role_order", "missing_messages")
_BROKEN_COUNTS = {
    "malformed_json": 8,
    "invalid_utf8": 6,
    "empty_response": 7,
    "bad_role_order": 6,
    "missing_messages": 5,
}
_CONTAMINATED_TEST = 5


@dataclass(frozen=True)
class DemoCorpus:
    """Where the demo corpus was written, its labels, and the exact count of every planted defect."""

    train_path: Path
    test_path: Path
    labels: list[str]
    planted: dict[str, int]


def dedup_key(text: str) -> str:
    """Casefolded letters and digits only: coarser than any normalisation the duplicate checks use.

    Generating distinct queries under this key guarantees the only duplicates in the corpus are planted ones.
    """
    return _NON_ALNUM_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


@dataclass(frozen=True)
class PhraseBank:
    """The core sentences and follow-up sentences queries of each intent are composed from."""

    cores: dict[str, tuple[str, ...]]
    followups: dict[str, tuple[str, ...]]


#: Every fourth core and follow-up sentence of an intent (from the second on) is held out for the test split.
HELD_OUT_EVERY = 4


def split_phrase_banks() -> tuple[PhraseBank, PhraseBank]:
    """(train bank, test bank): disjoint core and follow-up sentences per intent.

    Test queries are composed only from sentences no training query uses, so a fresh test query is never a near
    copy of a training one (only a template-level resemblance: the shared greetings and sign-offs). When both
    splits drew from one bank, 81 of 400 test queries were near copies of training prompts (the same core
    sentence with other slot values) and the gate rightly called the eval set contaminated.
    """

    def split(bank: dict[str, tuple[str, ...]]) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
        held = {k: tuple(p for i, p in enumerate(v) if i % HELD_OUT_EVERY == 1) for k, v in bank.items()}
        kept = {k: tuple(p for i, p in enumerate(v) if i % HELD_OUT_EVERY != 1) for k, v in bank.items()}
        return kept, held

    train_cores, test_cores = split(_CORES)
    train_followups, test_followups = split(_FOLLOWUPS)
    return PhraseBank(train_cores, train_followups), PhraseBank(test_cores, test_followups)


class _QueryWriter:
    """Composes one customer query; kept as a class so all randomness flows through the one seeded rng."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def fill(self, template: str) -> str:
        return _SLOT_RE.sub(lambda m: _SLOTS[m.group(1)](self.rng), template)

    def _sentence(self, text: str, final: bool) -> str:
        r = self.rng
        if text.endswith("?"):
            return text if not final or r.random() < 0.88 else text.rstrip("?") + r.choice(("", "??"))
        return text + (r.choice((".", ".", ".", ".", "!", "")) if final else ".")

    def _typo(self, text: str) -> str:
        words = text.split(" ")
        known = [i for i, w in enumerate(words) if w.lower() in _MISSPELLINGS]
        if known and self.rng.random() < 0.5:
            i = self.rng.choice(known)
            words[i] = _MISSPELLINGS[words[i].lower()]
            return " ".join(words)
        long_words = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
        if not long_words:
            return text
        i = self.rng.choice(long_words)
        w, j = words[i], self.rng.randrange(1, len(words[i]) - 2)
        words[i] = self.rng.choice((w[:j] + w[j + 1] + w[j] + w[j + 2 :], w[:j] + w[j + 1 :], w[:j] + w[j] + w[j:]))
        return " ".join(words)

    def compose(self, label: str, bank: PhraseBank) -> str:
        """One query: core sentence, maybe context before or after, maybe greeting and sign-off, maybe casual."""
        r = self.rng
        core = self.fill(r.choice(bank.cores[label]))
        parts = [core]
        if r.random() < 0.35:
            followup = self.fill(r.choice(bank.followups[label]))
            parts = [followup, core] if r.random() < 0.3 else [core, followup]
        sentences = [self._sentence(p, final=i == len(parts) - 1) for i, p in enumerate(parts)]
        text = " ".join(sentences)
        if r.random() < 0.5:
            text = f"{r.choice(_OPENINGS)} {text}"
        if r.random() < 0.3:
            text = f"{text.rstrip()} {r.choice(_CLOSINGS)}" if text[-1] in ".?!" else f"{text}. {r.choice(_CLOSINGS)}"
        if r.random() < 0.13:  # typed in a hurry on a phone
            text = text.lower().rstrip(".!")
            if r.random() < 0.5:
                text = text.replace("'", "")
        else:
            text = _LONE_I_RE.sub("I", text)
            text = _SENTENCE_START_RE.sub(lambda m: m.group(1) + m.group(2).upper(), text)
            text = text[0].upper() + text[1:]
        if r.random() < 0.07:
            text = self._typo(text)
        return text


def _planted_counts(n_train: int, n_test: int, n_labels: int) -> dict[str, int]:
    """Duplicates scale with the corpus (1-2% each); broken rows are a fixed handful of each kind."""
    counts = {
        "exact_repeats": max(2, round(0.015 * n_train)),
        "normalized_duplicates": max(1, round(0.012 * n_train)),
        "conflicting_labels": max(1, round(0.01 * n_train)),
        **_BROKEN_COUNTS,
        "contaminated_test": _CONTAMINATED_TEST,
    }
    extra = sum(v for k, v in counts.items() if k != "contaminated_test")
    needed_sources = counts["exact_repeats"] + counts["normalized_duplicates"] + counts["conflicting_labels"]
    if n_train - extra < needed_sources + _CONTAMINATED_TEST + n_labels:
        raise ValueError(f"n_train={n_train} is too small to plant the demo defects; use at least 200")
    if n_test < _CONTAMINATED_TEST + n_labels:
        raise ValueError(f"n_test={n_test} is too small; use at least {_CONTAMINATED_TEST + n_labels}")
    return counts


def _unique_queries(
    writer: _QueryWriter, bank: PhraseBank, labels: list[str], n: int, seen: set[str]
) -> list[tuple[str, str]]:
    """``n`` (query, label) pairs, labels round-robin, every query new under ``dedup_key``."""
    pairs: list[tuple[str, str]] = []
    for i in range(n):
        label = labels[i % len(labels)]
        for _ in range(500):
            query = writer.compose(label, bank)
            key = dedup_key(query)
            if key not in seen:
                seen.add(key)
                pairs.append((query, label))
                break
        else:
            raise RuntimeError(f"phrase bank for {label!r} is exhausted; add phrases or ask for fewer rows")
    return pairs


def _chat(query: str, label: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": query}, {"role": "assistant", "content": label}]


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _normalized_variant(rng: random.Random, query: str, taken: set[str]) -> str:
    """The same query as a different string that differs only in case, inner whitespace or end punctuation."""
    base = query.rstrip(".?! ")
    edits: list[Callable[[str], str]] = [
        str.lower,
        str.upper,
        lambda s: s[0].swapcase() + s[1:],
        lambda s: s.rstrip(".?! ") + rng.choice(("", "?", "!", "...", "!!", ".", "??")),
        lambda s: s.replace(" ", "  ", 1),
    ]
    for _ in range(100):
        variant = query
        for edit in rng.sample(edits, rng.choice((1, 2))):
            variant = edit(variant)
        if variant != query and variant not in taken and variant.strip() == variant and base:
            return variant
    raise RuntimeError(f"no normalised variant found for {query!r}")


def _broken_line(kind: str, i: int, query: str, label: str, meta: dict[str, Any], rng: random.Random) -> bytes:
    """One row of a broken kind; ``i`` cycles through the realistic ways that kind turns up in exports."""
    good = json.dumps({"messages": _chat(query, label), "meta": meta}, ensure_ascii=False)
    if kind == "malformed_json":
        texts = (
            good[: len(good) // 2],  # truncated write
            good[:-1] + ",}",  # trailing comma
            str({"messages": _chat(query, label), "meta": meta}),  # Python repr instead of JSON
            good[:-1],  # lost closing brace
            good + good,  # missing newline between two rows
            good.replace('"content": "', '"content": "said "', 1),  # unescaped quote
        )
        return texts[i % len(texts)].encode("utf-8")
    if kind == "invalid_utf8":
        tail = _CP1252_TAILS[i % len(_CP1252_TAILS)].format(n=rng.randint(5, 300))
        content = f"{query} {tail}" if query[-1] in ".?!" else f"{query}. {tail}"
        obj = {"messages": _chat(content, label), "meta": meta}
        return json.dumps(obj, ensure_ascii=False).encode("cp1252")
    if kind == "empty_response":
        return _line(
            {
                "messages": [{"role": "user", "content": query}, {"role": "assistant", "content": ""}],
                "meta": meta,
            }
        )
    if kind == "bad_role_order":
        if i % 2 == 0:
            messages = list(reversed(_chat(query, label)))
        else:
            ping = {"role": "user", "content": rng.choice(_FOLLOWUP_PINGS)}
            messages = [_chat(query, label)[0], ping, _chat(query, label)[1]]
        return _line({"messages": messages, "meta": meta})
    if kind == "missing_messages":
        shapes: tuple[dict[str, Any], ...] = (
            {"prompt": query, "completion": label, "meta": meta},
            {"text": query, "label": label, "meta": meta},
            {"conversation": _chat(query, label), "meta": meta},
            {"meta": meta},
        )
        return _line(shapes[i % len(shapes)])
    raise ValueError(f"unknown broken kind {kind!r}")


def _meta(rng: random.Random, ticket: int) -> dict[str, Any]:
    return {
        "ticket": f"T-{ticket}",
        "channel": rng.choice(("chat", "email", "app", "web_form")),
        "locale": rng.choice(("en-GB", "en-US", "en-IE", "en-AU")),
    }


def write_demo_corpus(folder: Path, n_train: int = 3000, n_test: int = 400, seed: int = 7) -> DemoCorpus:
    """Write ``train.jsonl`` (exactly ``n_train`` lines, planted defects included), ``test.csv`` and a README.

    Every defect is planted on its own clean source row, so each one is counted once and only once.
    """
    labels = sorted(_CORES)
    planted = _planted_counts(n_train, n_test, len(labels))
    rng = random.Random(seed)
    writer = _QueryWriter(rng)
    n_broken = sum(planted[k] for k in BROKEN_KINDS)
    n_clean = (
        n_train - n_broken - sum(planted[k] for k in ("exact_repeats", "normalized_duplicates", "conflicting_labels"))
    )
    seen: set[str] = set()
    train_bank, test_bank = split_phrase_banks()
    clean = _unique_queries(writer, train_bank, labels, n_clean, seen)
    broken_pairs = _unique_queries(writer, train_bank, labels, n_broken, seen)
    fresh_test = _unique_queries(writer, test_bank, labels, n_test - planted["contaminated_test"], seen)
    tickets = iter(rng.sample(range(100000, 1000000), n_train))

    lines = [_line({"messages": _chat(q, lab), "meta": _meta(rng, next(tickets))}) for q, lab in clean]
    order = rng.sample(range(n_clean), n_clean)
    cursor = 0

    def take(k: int) -> list[int]:
        nonlocal cursor
        cursor += k
        return order[cursor - k : cursor]

    n_repeat_sources = planted["exact_repeats"] - planted["exact_repeats"] // 5  # a fifth are seen three times
    repeat_sources = take(n_repeat_sources)
    extra = [lines[j] for j in repeat_sources]
    extra += [lines[j] for j in repeat_sources[: planted["exact_repeats"] - n_repeat_sources]]
    taken = {q for q, _ in clean}
    for j in take(planted["normalized_duplicates"]):
        query, label = clean[j]
        variant = _normalized_variant(rng, query, taken)
        taken.add(variant)
        extra.append(_line({"messages": _chat(variant, label), "meta": _meta(rng, next(tickets))}))
    for j in take(planted["conflicting_labels"]):
        query, label = clean[j]
        other = rng.choice(_CONFUSABLE[label])
        extra.append(_line({"messages": _chat(query, other), "meta": _meta(rng, next(tickets))}))
    contaminated = [clean[j] for j in take(planted["contaminated_test"])]
    pairs = iter(broken_pairs)
    for kind in BROKEN_KINDS:
        for i in range(planted[kind]):
            query, label = next(pairs)
            extra.append(_broken_line(kind, i, query, label, _meta(rng, next(tickets)), rng))

    all_lines = lines + extra
    rng.shuffle(all_lines)
    test_rows = fresh_test + contaminated
    rng.shuffle(test_rows)

    folder.mkdir(parents=True, exist_ok=True)
    train_path, test_path = folder / "train.jsonl", folder / "test.csv"
    train_path.write_bytes(b"\n".join(all_lines) + b"\n")
    with test_path.open("w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["text", "category"])
        out.writerows(test_rows)
    (folder / "README.md").write_text(_readme(n_train, n_test, seed, labels, planted), encoding="utf-8")
    return DemoCorpus(train_path=train_path, test_path=test_path, labels=labels, planted=planted)


def _readme(n_train: int, n_test: int, seed: int, labels: list[str], planted: dict[str, int]) -> str:
    """The corpus explains itself, so someone who finds the folder knows which findings are expected."""
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in planted.items())
    return f"""# Refinery demo corpus: support-desk intent classification

Synthetic customer messages to a support desk (a card, an app, an online shop), each labelled with one of
{len(labels)} intents: {", ".join(f"`{lab}`" for lab in labels)}.

Generated by `refinery.demo_corpus.write_demo_corpus(n_train={n_train}, n_test={n_test}, seed={seed})` from
per-intent phrase banks and a seeded random generator: the same arguments always give byte-identical files.
No external data is used; tickets, order numbers and amounts are invented.

## Files
- `train.jsonl`: {n_train} lines, OpenAI chat format: `{{"messages": [{{"role": "user", "content": <query>}},
  {{"role": "assistant", "content": <label>}}], "meta": {{"ticket", "channel", "locale"}}}}`. The user message is
  exactly the customer's query (no instruction).
- `test.csv`: {n_test} rows with header `text,category`, the held-out split to register as an eval set.

## What was planted (exact counts)
| defect | count |
|---|---|
{rows}

- `exact_repeats`: extra lines byte-identical to another line (one record, several source rows).
- `normalized_duplicates`: extra rows whose query differs from another row's only in case, inner whitespace
  or end punctuation, with the same label.
- `conflicting_labels`: extra rows repeating another row's query exactly with a different (confusable) label.
- `malformed_json`, `invalid_utf8` (Windows-1252 bytes), `empty_response` (assistant content `""`),
  `bad_role_order` (assistant first, or two user messages in a row), `missing_messages` (no `messages` key):
  rows ingest should quarantine, each on a fresh query.
- `contaminated_test`: test rows that are exact copies (query and label) of clean train rows. Every other test
  query is composed from core and follow-up sentences that no training query uses (a quarter of each intent's
  phrase bank is held out for the test split), so it is not a near copy of any training query.
"""
