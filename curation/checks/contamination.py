"""The ``contamination`` check: word n-gram overlap between training records and registered eval items.

The classic decontamination test (as in GPT-3's and LLaMA's reports), on the part of each prompt that is not
shared boilerplate. Words are the tokens of :mod:`curation.similarity.shingles` (NFKC, casefolded, punctuation as
separators), n-grams their 64-bit hashes.

1. **Templates.** A word prefix (suffix) of at least 3 words that more than half (and more than 10) of the
   training prompts start (end) with is their template ("Identify the intent ... Customer message:"); the same
   for the eval items, separately. Every text is stripped of the longest prefix/suffix of those it has (every
   prefix of a template is as shared as the template, so a prompt keeps the first content word that most
   prompts share). What is left is the text's **content**; an item with no content is not tested.
   (:mod:`curation.similarity.template_strip`, shared with ``near_dup_eval``.)
2. **Method by content length** of the eval item: >= ``ngram`` (13) words, its 13-grams (``ngram13``);
   ``short_ngram`` (8) to 12, its 8-grams (``ngram8``); ``min_tokens`` (3) to 7, the whole content as one
   n-gram (``full_prompt``); under 3 words, not tested (counted in the summary). Training n-grams count only
   inside the training text's content, so no n-gram spans a template and the start of a query.
3. **Overlap.** Long items: the fraction of the item's n-grams found in the training record (containment:
   "how much of the item leaked"). Shorter items must also be nearly all of the training content: overlap =
   min(containment, item words / training content words). Short items (3-12 words) also match a training
   content of the same words but one, where that word is a typo of the item's (method ``typo``:
   "chaged"/"charged", "I'm"/"I am"; see :func:`is_typo`), overlap = the difflib ratio of the two contents.
   N-grams in more than 5% (and 10) of the eval items are boilerplate in the middle of the items and ignored.

Matching uses an inverted index of the eval n-gram hashes; training records are hashed in chunks (numpy,
one ``np.isin`` per n-gram length); the typo pass looks up each short training content with one word left out
at a time in a dict. The cost is linear in the training text.

Finding per training record: score = its best overlap with any eval item (0.0 when none), flagged when it
reaches ``threshold``; a :class:`ContaminationHit` (``contamination_hits``, ``contamination`` view) for every
(record, eval item) pair at or above it. With no eval set registered, every score is 0.0 and the summary says so.

Default threshold 0.8 (docs/CHECKS.md): banking77 train with ``--template intent`` (9,999) against its test
split (3,079 items, with or without the template) flags 127 records (131 pairs: 56 full_prompt, 46 typo, 16
ngram8, 9 ngram13); all test queries found verbatim in train are hits (7 by lower-case comparison, 25 up to
punctuation); hand check of 20 sampled flagged records: 20/20 the same question up to typos or a trivial word.
Before template stripping the same setup flagged 546, mostly queries sharing their first words.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from difflib import SequenceMatcher

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, ContaminationHit, Finding, Needs, ScanRecord
from curation.similarity.eval_match import ContaminationError, Reference, load_eval_items
from curation.similarity.near_dup import Scope, scope_text
from curation.similarity.shingles import shingle_batch, tokens
from curation.similarity.template_strip import Templates, content_window, find_templates
from schemas.progress import progress

FULL_PROMPT = "full_prompt"
TYPO = "typo"
#: Two words are the same word mistyped at this character similarity (difflib ratio) or more.
TYPO_WORD_SIMILARITY = 0.75


class NgramContaminationConfig(BaseModel):
    """Configuration of ``contamination``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.8, gt=0.0, le=1.0, description="Flag records sharing this fraction of an eval item.")
    ngram: int = Field(13, ge=2, le=64, description="Words per n-gram for eval items of at least this many words.")
    short_ngram: int = Field(8, ge=1, le=64, description="Words per n-gram for shorter eval items.")
    min_tokens: int = Field(3, ge=1, description="Eval items with fewer words are not tested.")
    scope: Scope = Field("prompt", description="Training text searched: prompt, response, or both (pair).")
    max_item_fraction: float = Field(
        0.05, gt=0.0, le=1.0, description="N-grams in more than this fraction of eval items are boilerplate."
    )
    eval_sets: list[str] | None = Field(None, description="Compare only with these eval sets (default: all).")
    chunk: int = Field(20_000, ge=1, description="Training records hashed at once.")

    @model_validator(mode="after")
    def _ordered(self) -> NgramContaminationConfig:
        if self.short_ngram > self.ngram:
            raise ValueError(f"short_ngram ({self.short_ngram}) must not exceed ngram ({self.ngram})")
        return self


def window_ngrams(texts: Sequence[str], n: int, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text row, hash) of every word ``n``-gram lying inside the text's content window."""
    batch = shingle_batch(texts, n)
    rows = np.repeat(np.arange(len(texts), dtype=np.int64), batch.counts)
    position = np.arange(len(batch.hashes)) - np.repeat(batch.offsets[:-1], batch.counts)
    inside = (position >= start[rows]) & (position + n <= end[rows])
    return rows[inside], batch.hashes[inside]


class EvalIndex:
    """Eval items as sorted n-gram hashes: ``items[lo:hi]`` are the items containing ``hashes[lo]``.

    Each item is first stripped of ``templates`` (the training side's) and of its own eval set's template.
    ``content[i]`` is the number of words left in item ``i``, ``n[i]`` its n-gram length, ``n_grams[i]`` its
    number of distinct (non-boilerplate) n-grams, ``method[i]`` how they were taken, ``lengths`` the n-gram
    lengths a training text must be hashed with.
    """

    def __init__(
        self, references: Sequence[Reference], config: NgramContaminationConfig, templates: Templates | None = None
    ) -> None:
        self.references = list(references)
        texts = [r.text for r in self.references]
        self.templates = (templates or Templates()) | find_templates(texts)
        start, end = content_window(texts, self.templates)
        content = end - start
        self.method = np.full(len(texts), "", dtype=object)
        self.n = np.zeros(len(texts), dtype=np.int64)
        item_parts: list[np.ndarray] = []
        hash_parts: list[np.ndarray] = []
        lengths: set[int] = set()
        groups = [
            (content >= config.ngram, config.ngram, f"ngram{config.ngram}"),
            (
                (content >= config.short_ngram) & (content < config.ngram),
                config.short_ngram,
                f"ngram{config.short_ngram}",
            ),
        ]
        # a short item is one n-gram: all its words
        groups += [
            ((content == k) & (k < config.short_ngram), k, FULL_PROMPT)
            for k in range(config.min_tokens, config.short_ngram)
        ]
        for mask, n, method in groups:
            rows = np.flatnonzero(mask)
            if not len(rows):
                continue
            sub, hashes = window_ngrams([texts[i] for i in rows.tolist()], n, start[rows], end[rows])
            item_parts.append(rows[sub])
            hash_parts.append(hashes)
            self.method[rows] = method
            self.n[rows] = n
            lengths.add(n)
        self.content = content
        self.too_short = int((content < config.min_tokens).sum())
        # short items, one word left out at a time: a training text with the same words but one, where that
        # word differs by a typo, is a copy the word n-grams miss ("why was i chaged twice ...")
        self.typo_keys: dict[tuple[str, ...], list[tuple[int, str]]] = {}
        self.typo_items: list[list[str]] = [[] for _ in texts]
        for i in np.flatnonzero((content >= config.min_tokens) & (content < config.ngram)).tolist():
            words = tokens(texts[i])[int(start[i]) : int(end[i])]
            self.typo_items[i] = words
            for k, word in enumerate(words):
                self.typo_keys.setdefault((str(k), *words[:k], *words[k + 1 :]), []).append((i, word))
        items = np.concatenate(item_parts) if item_parts else np.zeros(0, dtype=np.int64)
        hashes = np.concatenate(hash_parts) if hash_parts else np.zeros(0, dtype=np.uint64)
        # one row per distinct (item, hash)
        order = np.lexsort((hashes, items))
        items, hashes = items[order], hashes[order]
        keep = np.ones(len(items), dtype=bool)
        keep[1:] = (items[1:] != items[:-1]) | (hashes[1:] != hashes[:-1])
        items, hashes = items[keep], hashes[keep]
        # boilerplate: hashes shared by many items (a template in the middle of the items)
        _, inverse, df = np.unique(hashes, return_inverse=True, return_counts=True)
        limit = max(10.0, config.max_item_fraction * len(texts))
        common = df[inverse.ravel()] > limit
        self.boilerplate_ngrams = int((df > limit).sum())
        items, hashes = items[~common], hashes[~common]
        self.n_grams = np.bincount(items, minlength=len(texts)).astype(np.int64)
        self.all_boilerplate = int(((self.n_grams == 0) & (self.method != "")).sum())
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.items = items[order]
        self.lengths = sorted(lengths)

    def lookup(self, rec: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(record row, item row) for every (record row, n-gram hash) pair, one per item containing it."""
        lo = np.searchsorted(self.hashes, hashes, side="left")
        hi = np.searchsorted(self.hashes, hashes, side="right")
        counts = hi - lo
        total = int(counts.sum())
        left = np.repeat(rec, counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        return left, self.items[np.repeat(lo, counts) + offsets]


def overlaps(
    texts: Sequence[str], index: EvalIndex, config: NgramContaminationConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (training text row, eval item row) sharing at least one n-gram, or a typo copy (method ``typo``,
    :func:`typo_pairs`): rows, item rows, matched n-gram counts, overlap and method, by chunk of text rows.

    Training texts are stripped of the templates of ``index`` first. Overlap = matched / the item's n-grams
    (containment of the item); for an item shorter than ``ngram`` words, at most its words / the training
    text's content words, so a short eval query must also be nearly all of the training text's content.
    """
    long_item = index.method == f"ngram{config.ngram}"
    rec_parts, item_parts, count_parts, overlap_parts, method_parts = [], [], [], [], []
    chunk = config.chunk
    with progress("contamination", total=len(texts)) as bar:
        for first in range(0, len(texts), chunk):
            part = list(texts[first : first + chunk])
            start, end = content_window(part, index.templates)
            pair_rec, pair_hash = [], []
            for n in index.lengths:
                rows, hashes = window_ngrams(part, n, start, end)
                hit = np.isin(hashes, index.hashes)
                pair_rec.append(rows[hit])
                pair_hash.append(hashes[hit])
            typo_rec, typo_item, typo_overlap = typo_pairs(part, start, end, index)
            if pair_rec:
                rec = np.concatenate(pair_rec)
                hashes = np.concatenate(pair_hash)
                order = np.lexsort((hashes, rec))
                rec, hashes = rec[order], hashes[order]
                distinct = np.ones(len(rec), dtype=bool)
                distinct[1:] = (rec[1:] != rec[:-1]) | (hashes[1:] != hashes[:-1])
                left, right = index.lookup(rec[distinct], hashes[distinct])
                n_items = max(len(index.references), 1)
                codes, counts = np.unique(left * n_items + right, return_counts=True)
                rows_in_part = codes // n_items
                items = codes % n_items
                overlap = np.minimum(counts / np.maximum(index.n_grams[items], 1), 1.0)
                short = ~long_item[items]
                words = index.content[items[short]]
                ratio = words / np.maximum((end - start)[rows_in_part[short]], words)
                overlap[short] = np.minimum(overlap[short], ratio)
                rec_parts.append(rows_in_part + first)
                item_parts.append(items)
                count_parts.append(counts)
                overlap_parts.append(overlap)
                method_parts.append(index.method[items])
            rec_parts.append(typo_rec + first)
            item_parts.append(typo_item)
            count_parts.append(np.zeros(len(typo_rec), dtype=np.int64))
            overlap_parts.append(typo_overlap)
            method_parts.append(np.full(len(typo_rec), TYPO, dtype=object))
            bar.advance(len(part))
    if not rec_parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0), np.zeros(0, dtype=object)
    return (
        np.concatenate(rec_parts),
        np.concatenate(item_parts),
        np.concatenate(count_parts),
        np.concatenate(overlap_parts),
        np.concatenate(method_parts),
    )


def is_typo(word: str, other: str) -> bool:
    """Two different words are one mistyped or contracted: character similarity >= TYPO_WORD_SIMILARITY
    ("chaged"/"charged", "limits"/"limit"), or one starts or ends the other ("m"/"am", "t"/"not")."""
    if SequenceMatcher(None, word, other).ratio() >= TYPO_WORD_SIMILARITY:
        return True
    return word.startswith(other) or word.endswith(other) or other.startswith(word) or other.endswith(word)


def typo_pairs(
    texts: Sequence[str], start: np.ndarray, end: np.ndarray, index: EvalIndex
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text row, item row, overlap) where the text's content has the words of a short eval item but one, and
    that word is a typo of the item's (:func:`is_typo`: "chaged"/"charged", "withdrawl"/"withdrawal", "m"/"am",
    but not "uk"/"us", "currencies"/"countries" or "activate"/"cancel"). Overlap = the character
    similarity of the two contents (difflib ratio, about 0.95-0.99 for one typo)."""
    rows: list[int] = []
    items: list[int] = []
    overlap: list[float] = []
    if not index.typo_keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    content = end - start
    sizes = np.unique(index.content[[i for i, w in enumerate(index.typo_items) if w]])
    for row in np.flatnonzero(np.isin(content, sizes)).tolist():
        words = tokens(texts[row])[int(start[row]) : int(end[row])]
        for k, word in enumerate(words):
            for item, other in index.typo_keys.get((str(k), *words[:k], *words[k + 1 :]), ()):
                if other != word and is_typo(word, other):
                    rows.append(row)
                    items.append(item)
                    overlap.append(SequenceMatcher(None, " ".join(words), " ".join(index.typo_items[item])).ratio())
    return np.array(rows, dtype=np.int64), np.array(items, dtype=np.int64), np.array(overlap, dtype=np.float64)


def check_ngram_contamination(records: Sequence[ScanRecord], ctx: CheckContext) -> CheckOutput:
    """The ``contamination`` scan check (see the module docstring)."""
    config = ctx.config if isinstance(ctx.config, NgramContaminationConfig) else NgramContaminationConfig()
    if ctx.catalog is None:
        raise ContaminationError("contamination needs the catalog (the eval sets are registered there)")
    started = time.monotonic()
    references = load_eval_items(ctx.catalog, "prompt", config.eval_sets)
    if not references:
        note = "no eval set registered: nothing to compare (register one with `refinery ingest --eval-set NAME`)"
        if config.eval_sets:
            note = f"no eval items in eval set(s) {', '.join(config.eval_sets)}"
        findings = [Finding(r.record_id, 0.0, False) for r in records]
        return CheckOutput(findings, summary={"eval_sets": 0, "eval_items": 0, "contaminated": 0, "note": note})
    texts = [scope_text(r.prompt, r.response, config.scope) for r in records]
    index = EvalIndex(references, config, find_templates(texts))
    rec_rows, item_rows, counts, overlap, methods = overlaps(texts, index, config)
    # best pair per record: highest overlap, then smallest eval record id, then eval set
    item_rank = np.empty(len(references), dtype=np.int64)
    item_rank[sorted(range(len(references)), key=lambda i: (references[i].record_id, references[i].group))] = np.arange(
        len(references)
    )
    order = np.lexsort((item_rank[item_rows], -overlap, rec_rows))
    best: dict[int, int] = {}
    hits: list[ContaminationHit] = []
    seen: set[tuple[int, int]] = set()
    for k in order.tolist():
        row, item = int(rec_rows[k]), int(item_rows[k])
        best.setdefault(row, k)
        if (row, item) in seen:  # an n-gram match and a typo match of one pair: the higher overlap counts
            continue
        seen.add((row, item))
        if overlap[k] >= config.threshold:
            ref = references[item]
            counted = {"matched_ngrams": int(counts[k]), "item_ngrams": int(index.n_grams[item])}
            hits.append(
                ContaminationHit(
                    records[row].record_id,
                    ref.group,
                    ref.record_id,
                    round(float(overlap[k]), 6),
                    str(methods[k]),
                    counted,
                )
            )
    n_hits: dict[str, int] = {}
    for h in hits:
        n_hits[h.record_id] = n_hits.get(h.record_id, 0) + 1
    findings = []
    for row, rec in enumerate(records):
        k = best.get(row)
        if k is None:
            findings.append(Finding(rec.record_id, 0.0, False))
            continue
        score = round(float(overlap[k]), 6)
        ref = references[int(item_rows[k])]
        method = str(methods[k])
        flagged = score >= config.threshold
        details: dict[str, object] = {
            "eval_set": ref.group,
            "eval_record_id": ref.record_id,
            "overlap": score,
            "method": method,
            "eval_matches": n_hits.get(rec.record_id, 0),
        }
        reason = None
        if flagged:
            what = {FULL_PROMPT: "contains eval item", TYPO: "is a typo copy of eval item"}.get(
                method, f"shares {score:.0%} of the {method} of eval item"
            )
            reason = f"{what} {ref.record_id} of eval set {ref.group!r}"
        findings.append(Finding(rec.record_id, score, flagged, reason, details))
    summary = {
        "threshold": config.threshold,
        "eval_sets": len({r.group for r in references}),
        "eval_items": len(references),
        "eval_items_too_short": index.too_short,
        "eval_items_all_boilerplate": index.all_boilerplate,
        "boilerplate_ngrams": index.boilerplate_ngrams,
        "template_words": list(index.templates.words),
        "contaminated": sum(f.flagged for f in findings),
        "hits": len(hits),
        "eval_items_hit": len({(h.eval_set, h.eval_item) for h in hits}),
        "seconds": round(time.monotonic() - started, 3),
    }
    return CheckOutput(findings, summary=summary, contamination=hits)


SPEC = CheckSpec(
    "contamination",
    check_ngram_contamination,
    higher_score="more of an eval item found in the record (n-gram containment, or a typo copy's similarity)",
    config=NgramContaminationConfig,
    default=True,
    blocks_snapshot=True,
    needs=Needs(eval_sets=True),
)
