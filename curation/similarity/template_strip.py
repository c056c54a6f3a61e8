"""Prompt templates: the word prefix / suffix most texts of a set share, and each text's content without it.

A dataset ingested with a template (``refinery ingest --template intent``: "Identify the intent of the following
customer message. ... Customer message: {text}") gives every prompt the same words around its real content.
Compared whole, two such prompts look alike because of the template; the contamination checks compare the
content instead. Words are the tokens of :mod:`curation.similarity.shingles` (NFKC, casefolded, punctuation as
separators), held as their 64-bit hashes.

A template is a word prefix (suffix) of at least TEMPLATE_MIN_WORDS words that more than TEMPLATE_FRACTION (and
more than 10) of the texts start (end) with, looked for in the first TEMPLATE_SAMPLE texts. Each text is stripped
of the longest prefix and suffix it has of the templates given (counted from TEMPLATE_MIN_WORDS words: every
prefix of a template is as shared as the template, so a prompt keeps the first content word most prompts share).
Used by ``contamination`` (:mod:`curation.checks.contamination`, on word windows) and ``near_dup_eval``
(:mod:`curation.checks.near_dup_eval`, on content texts).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from curation.similarity.shingles import ShingleBatch, shingle_batch, tokens
from schemas.ids import canonical_json, sha256_text

#: A word prefix (suffix) that more than this fraction of the texts (training prompts, or eval items) start
#: (end) with is their prompt template, stripped before comparing.
TEMPLATE_FRACTION = 0.5
#: ... and it must have at least this many words: a shared first word ("What") is content.
TEMPLATE_MIN_WORDS = 3
#: Templates are looked for in the first this many texts of each side.
TEMPLATE_SAMPLE = 20_000
#: The words of an ASCII text for :mod:`curation.similarity.shingles`: runs of letters and digits, lower-cased.
_ASCII_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Templates:
    """Shared word prefixes and suffixes (as token hash sequences) to strip from every text that has them."""

    prefixes: tuple[tuple[int, ...], ...] = ()
    suffixes: tuple[tuple[int, ...], ...] = ()

    def __or__(self, other: Templates) -> Templates:
        return Templates(
            tuple(dict.fromkeys(self.prefixes + other.prefixes)), tuple(dict.fromkeys(self.suffixes + other.suffixes))
        )

    def __bool__(self) -> bool:
        return bool(self.prefixes or self.suffixes)

    @property
    def words(self) -> tuple[int, int]:
        """Words of the longest prefix and suffix (for the summary)."""
        return max(map(len, self.prefixes), default=0), max(map(len, self.suffixes), default=0)

    def digest(self) -> str:
        """Names the stripping rule and these templates: the content of a text is a function of the text and it."""
        rule = {"min_words": TEMPLATE_MIN_WORDS, "prefixes": sorted(self.prefixes), "suffixes": sorted(self.suffixes)}
        return sha256_text(canonical_json(rule))[:16]


def _shared_edge(words: ShingleBatch, from_end: bool, max_words: int = 256) -> tuple[int, ...]:
    """The longest word prefix (``from_end``: suffix) of more than TEMPLATE_FRACTION (and more than 10) of the
    texts: grown one word at a time while one next word is shared by that many texts (a majority is unique)."""
    counts, offsets, hashes = words.counts, words.offsets, words.hashes
    limit = max(10.0, TEMPLATE_FRACTION * len(counts))
    active = np.arange(len(counts))
    edge: list[int] = []
    for k in range(max_words):
        active = active[counts[active] > k]
        if len(active) <= limit:
            break
        values = hashes[offsets[active + 1] - 1 - k] if from_end else hashes[offsets[active] + k]
        unique, inverse, df = np.unique(values, return_inverse=True, return_counts=True)
        best = int(df.argmax())
        if df[best] <= limit:
            break
        edge.append(int(unique[best]))
        active = active[inverse.ravel() == best]
    if len(edge) < TEMPLATE_MIN_WORDS:
        return ()
    return tuple(edge[::-1]) if from_end else tuple(edge)


def find_templates(texts: Sequence[str]) -> Templates:
    """The prompt template of ``texts`` (their first TEMPLATE_SAMPLE): a shared prefix and/or suffix."""
    words = shingle_batch(list(texts[:TEMPLATE_SAMPLE]), 1)
    prefix, suffix = _shared_edge(words, False), _shared_edge(words, True)
    return Templates((prefix,) if prefix else (), (suffix,) if suffix else ())


def group_templates(texts: Sequence[str], groups: Sequence[str]) -> Templates:
    """The templates of each group of ``texts`` (an eval set, a snapshot split), found separately, together."""
    members: dict[str, list[str]] = {}
    for text, group in zip(texts, groups, strict=True):
        members.setdefault(group, []).append(text)
    found = Templates()
    for group in sorted(members):
        found = found | find_templates(members[group])
    return found


def _edge_lengths(words: ShingleBatch, edges: Sequence[tuple[int, ...]], from_end: bool) -> np.ndarray:
    """Per text, the most words it starts (ends) with of any of ``edges``, counted when at least
    TEMPLATE_MIN_WORDS: every prefix of a template is shared by as many texts, so a prompt is stripped of the
    longest shared prefix it has (the template, not the first content word that most prompts share)."""
    counts = words.counts
    out = np.zeros(len(counts), dtype=np.int64)
    if not len(words.hashes):
        return out
    for edge in edges:
        size = np.arange(len(edge))
        target = np.array(edge[::-1] if from_end else edge, dtype=np.uint64)
        index = (words.offsets[1:, None] - 1 - size) if from_end else (words.offsets[:-1, None] + size)
        valid = size < counts[:, None]
        equal = valid & (words.hashes[np.clip(index, 0, len(words.hashes) - 1)] == target)
        agree = np.cumprod(equal, axis=1).sum(axis=1)
        out = np.maximum(out, np.where(agree >= TEMPLATE_MIN_WORDS, agree, 0))
    return out


def _window(words: ShingleBatch, templates: Templates) -> tuple[np.ndarray, np.ndarray]:
    start = _edge_lengths(words, templates.prefixes, False)
    end = np.maximum(words.counts - _edge_lengths(words, templates.suffixes, True), start)
    return start, end


def content_window(texts: Sequence[str], templates: Templates) -> tuple[np.ndarray, np.ndarray]:
    """Per text, the first and end word position of its content: its words less the template it has."""
    return _window(shingle_batch(texts, 1), templates)


def content_texts(texts: Sequence[str], templates: Templates, chunk: int = 50_000) -> tuple[list[str], np.ndarray]:
    """Per text, its content as a text, and whether a template was stripped from it.

    A stripped text's content is its normalised words inside :func:`content_window`, joined by spaces, so
    :mod:`curation.similarity.shingles` reads the same words from it (empty when the text is all template); any other
    text is returned unchanged, so its shingles, and a MinHash signature stored for it, stay those of the text.
    """
    out = list(texts)
    stripped = np.zeros(len(out), dtype=bool)
    if not templates:
        return out, stripped
    for first in range(0, len(out), chunk):  # the word hashes of a chunk at a time: bounded memory
        words = shingle_batch(out[first : first + chunk], 1)
        start, end = _window(words, templates)
        cut = (start > 0) | (end < words.counts)
        stripped[first : first + len(cut)] = cut
        for i in np.flatnonzero(cut).tolist():
            out[first + i] = " ".join(words_of(out[first + i])[int(start[i]) : int(end[i])])
    return out, stripped


def words_of(text: str) -> list[str]:
    """:func:`curation.similarity.shingles.tokens`, ten times faster on ASCII text (no Unicode normalisation to do)."""
    return _ASCII_WORD.findall(text.lower()) if text.isascii() else tokens(text)
