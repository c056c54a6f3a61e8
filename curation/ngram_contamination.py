"""The ``contamination`` check: word n-gram overlap between training records and registered eval items.

The classic decontamination test (as in GPT-3's and LLaMA's reports): an eval item leaked into training data
when the training text contains its word n-grams. Here, for every eval item (its prompt; eval sets are
registered with ``refinery ingest --eval-set NAME`` and listed by the ``eval_items`` view):

- an item of at least ``ngram`` (13) words is represented by its word 13-grams (method ``ngram13``);
- an item of ``short_ngram`` (8) to 12 words by its 8-grams (method ``ngram8``);
- an item of ``min_tokens`` (3) to 7 words by the whole normalised prompt (method ``full_prompt``): it
  matches when the training text contains it verbatim (after normalisation);
- an item of fewer than ``min_tokens`` words is not tested (too generic: "Change currency"); the summary
  counts them.

Words are the tokens of :mod:`curation.shingles` (NFKC, casefolded, punctuation as separators, a CJK character
or an emoji a token of its own) and n-grams are its 64-bit hashes, so "Where's my card?" and "where s my
card" are the same text. **overlap** = the fraction of the eval item's n-grams found in the training record
(the training text is the record's prompt and response, ``scope``), so it says "how much of the eval item
leaked", whatever the length of the training record. An n-gram shared by more than ``max_item_fraction`` of
the eval items (and more than 10 of them) is template boilerplate ("Identify the intent of the following
customer message ...") and is ignored on both sides; an item made only of boilerplate is not tested.

Matching uses an inverted index: the eval n-gram hashes, sorted, with the items that contain each. Training
records are hashed in chunks (vectorised numpy), looked up with one ``np.isin`` per n-gram length, and only
matching n-grams reach Python, so the cost is linear in the training text.

Finding per training record: score = its best overlap with any eval item (0.0 when none), flagged when it
reaches ``threshold``; a :class:`ContaminationHit` (stored in ``contamination_hits``, shown by the
``contamination`` view) for every (record, eval item) pair at or above the threshold. With no eval set
registered, every score is 0.0 and the summary says so.

Default threshold 0.8 (docs/CHECKS.md): banking77 train (9,999 records) against its test split (3,079 items)
gives 481 records at overlap >= 0.3, 344 >= 0.5, 98 >= 0.8 and 55 at 1.0. Hand-checked: every pair
at >= 0.8 was the same query up to punctuation or one added word (10/10); between 0.5 and 0.8 about 7 in 10 were
the same query reworded, the rest a shared phrase with another question; below 0.5 mostly a shared phrase.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.check_types import CheckContext, CheckOutput, ContaminationHit, Finding, ScanRecord
from curation.contamination_check import ContaminationError, Reference, load_eval_items
from curation.near_dup import Scope
from curation.near_dup_check import scope_text
from curation.shingles import shingle_batch
from schemas.progress import progress

CHECK_NAME = "contamination"
FULL_PROMPT = "full_prompt"
#: An n-gram in more than this fraction of the training texts is their prompt template. Half, not the eval
#: side's 5%: n-grams joining a template to a common first word ("... customer message: I") are in a third
#: of banking77's training prompts and must stay content.
TEMPLATE_FRACTION = 0.5


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


class EvalIndex:
    """Eval items as sorted n-gram hashes: ``items[lo:hi]`` are the items containing ``hashes[lo]``.

    ``n_grams[i]`` is the number of distinct (non-boilerplate) n-grams of item ``i``, ``method[i]`` how they
    were taken, ``lengths`` the n-gram lengths a training text must be hashed with.
    """

    def __init__(self, references: Sequence[Reference], config: NgramContaminationConfig) -> None:
        self.references = list(references)
        texts = [r.text for r in self.references]
        n_tokens = shingle_batch(texts, 1).counts if texts else np.zeros(0, dtype=np.int64)
        self.method = np.full(len(texts), "", dtype=object)
        item_parts: list[np.ndarray] = []
        hash_parts: list[np.ndarray] = []
        lengths: set[int] = set()
        groups = (
            (n_tokens >= config.ngram, config.ngram, f"ngram{config.ngram}"),
            (
                (n_tokens >= config.short_ngram) & (n_tokens < config.ngram),
                config.short_ngram,
                f"ngram{config.short_ngram}",
            ),
            ((n_tokens >= config.min_tokens) & (n_tokens < config.short_ngram), config.short_ngram, FULL_PROMPT),
        )
        for mask, n, method in groups:
            rows = np.flatnonzero(mask)
            if not len(rows):
                continue
            batch = shingle_batch([texts[i] for i in rows.tolist()], n)
            item_parts.append(np.repeat(rows, batch.counts))
            hash_parts.append(batch.hashes)
            self.method[rows] = method
            if method == FULL_PROMPT:
                lengths.update(int(k) for k in np.unique(n_tokens[rows]))
            else:
                lengths.add(n)
        self.n_tokens = n_tokens
        self.too_short = int((n_tokens < config.min_tokens).sum())
        items = np.concatenate(item_parts) if item_parts else np.zeros(0, dtype=np.int64)
        hashes = np.concatenate(hash_parts) if hash_parts else np.zeros(0, dtype=np.uint64)
        # one row per distinct (item, hash)
        order = np.lexsort((hashes, items))
        items, hashes = items[order], hashes[order]
        keep = np.ones(len(items), dtype=bool)
        keep[1:] = (items[1:] != items[:-1]) | (hashes[1:] != hashes[:-1])
        items, hashes = items[keep], hashes[keep]
        # boilerplate: hashes shared by many items
        _, inverse, df = np.unique(hashes, return_inverse=True, return_counts=True)
        limit = max(10.0, config.max_item_fraction * len(texts))
        common = df[inverse] > limit
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


def training_boilerplate(texts: Sequence[str], n: int, max_fraction: float, sample: int = 20_000) -> np.ndarray:
    """Sorted hashes of the ``n``-grams found in more than ``max_fraction`` (and more than 10) of the first
    ``sample`` training texts: a prompt template shared by the training records."""
    part = list(texts[:sample])
    if not part:
        return np.zeros(0, dtype=np.uint64)
    batch = shingle_batch(part, n)
    rows = np.repeat(np.arange(len(part), dtype=np.int64), batch.counts)
    pairs = np.unique(np.stack([rows.astype(np.uint64), batch.hashes]), axis=1)
    unique, df = np.unique(pairs[1], return_counts=True)
    return unique[df > max(10.0, max_fraction * len(part))]


def content_tokens(texts: Sequence[str], n: int, boilerplate: np.ndarray) -> np.ndarray:
    """Per text, the number of tokens not covered by a boilerplate ``n``-gram (all tokens when none is)."""
    n_tok = shingle_batch(texts, 1).counts
    if not len(boilerplate) or not len(texts):
        return n_tok
    batch = shingle_batch(texts, n)
    rec = np.repeat(np.arange(len(texts), dtype=np.int64), batch.counts)
    position = np.arange(len(batch.hashes)) - np.repeat(batch.offsets[:-1], batch.counts)
    tok_offsets = np.concatenate(([0], np.cumsum(n_tok)))
    is_bp = np.isin(batch.hashes, boilerplate)
    start = tok_offsets[rec[is_bp]] + position[is_bp]
    end = start + np.minimum(n, n_tok[rec[is_bp]])
    diff = np.zeros(int(tok_offsets[-1]) + 1, dtype=np.int64)
    np.add.at(diff, start, 1)
    np.add.at(diff, end, -1)
    covered = np.cumsum(diff)[:-1] > 0
    token_rec = np.repeat(np.arange(len(texts), dtype=np.int64), n_tok)
    return n_tok - np.bincount(token_rec[covered], minlength=len(texts))


def overlaps(
    texts: Sequence[str], index: EvalIndex, config: NgramContaminationConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (training text row, eval item row) sharing at least one n-gram: rows, item rows, matched n-gram
    counts and overlap, sorted by text row then item row.

    Overlap = matched / the item's n-grams for n-gram items; for a ``full_prompt`` item (one n-gram, the
    whole prompt) it is the item's words / the training text's words outside training boilerplate (at most
    1.0), so a short eval prompt that *is* the training prompt scores 1.0 and one that is a phrase inside a
    long training prompt scores low.
    """
    boilerplate = training_boilerplate(texts, config.short_ngram, TEMPLATE_FRACTION)
    item_tokens = index.n_tokens
    is_full = index.method == FULL_PROMPT
    rec_parts, item_parts, count_parts, overlap_parts = [], [], [], []
    chunk = config.chunk
    with progress("contamination", total=len(texts)) as bar:
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            pair_rec, pair_hash = [], []
            for n in index.lengths:
                batch = shingle_batch(part, n)
                rows = np.repeat(np.arange(len(part), dtype=np.int64), batch.counts)
                hit = np.isin(batch.hashes, index.hashes)
                pair_rec.append(rows[hit])
                pair_hash.append(batch.hashes[hit])
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
                overlap = counts / np.maximum(index.n_grams[items], 1)
                full = is_full[items]
                if full.any():
                    content = content_tokens([part[i] for i in range(len(part))], config.short_ngram, boilerplate)
                    ratio = item_tokens[items[full]] / np.maximum(content[rows_in_part[full]], item_tokens[items[full]])
                    overlap[full] = ratio
                rec_parts.append(rows_in_part + start)
                item_parts.append(items)
                count_parts.append(counts)
                overlap_parts.append(overlap)
            bar.advance(len(part))
    if not rec_parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0)
    return (
        np.concatenate(rec_parts),
        np.concatenate(item_parts),
        np.concatenate(count_parts),
        np.concatenate(overlap_parts),
    )


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
    index = EvalIndex(references, config)
    texts = [scope_text(r, config.scope) for r in records]
    rec_rows, item_rows, counts, overlap = overlaps(texts, index, config)
    # best pair per record: highest overlap, then smallest eval record id, then eval set
    item_rank = np.empty(len(references), dtype=np.int64)
    item_rank[sorted(range(len(references)), key=lambda i: (references[i].record_id, references[i].group))] = np.arange(
        len(references)
    )
    order = np.lexsort((item_rank[item_rows], -overlap, rec_rows))
    best: dict[int, int] = {}
    hits: list[ContaminationHit] = []
    for k in order.tolist():
        row, item = int(rec_rows[k]), int(item_rows[k])
        best.setdefault(row, k)
        if overlap[k] >= config.threshold:
            ref = references[item]
            counted = {"matched_ngrams": int(counts[k]), "item_ngrams": int(index.n_grams[item])}
            hits.append(
                ContaminationHit(
                    records[row].record_id,
                    ref.group,
                    ref.record_id,
                    round(float(overlap[k]), 6),
                    str(index.method[item]),
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
        method = str(index.method[int(item_rows[k])])
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
            what = "contains eval item" if method == FULL_PROMPT else f"shares {score:.0%} of the {method} of eval item"
            reason = f"{what} {ref.record_id} of eval set {ref.group!r}"
        findings.append(Finding(rec.record_id, score, flagged, reason, details))
    summary = {
        "threshold": config.threshold,
        "eval_sets": len({r.group for r in references}),
        "eval_items": len(references),
        "eval_items_too_short": index.too_short,
        "eval_items_all_boilerplate": index.all_boilerplate,
        "boilerplate_ngrams": index.boilerplate_ngrams,
        "contaminated": sum(f.flagged for f in findings),
        "hits": len(hits),
        "eval_items_hit": len({(h.eval_set, h.eval_item) for h in hits}),
        "seconds": round(time.monotonic() - started, 3),
    }
    return CheckOutput(findings, summary=summary, contamination=hits)
