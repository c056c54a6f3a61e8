"""Shingling for near-duplicate detection: many texts at once -> 64-bit hashes of their shingles.

Normalisation (version :data:`NORMALISATION`): NFKC and casefolding; punctuation, ASCII symbols, control and
format characters become separators; a character of a script written without spaces (Han, kana, Thai, Lao,
Khmer, Myanmar, Tibetan) and a non-ASCII symbol (emoji, arrows, currency signs) is a token on its own, with its
combining marks; any other run of characters between separators is a word token. A shingle is ``ngram``
consecutive tokens, so in Chinese or Thai it is a character n-gram. A text with fewer tokens than ``ngram`` is
one shingle (all its tokens); a text with no token at all (empty, whitespace, punctuation only) has no shingles.

The hashes are plain integer arithmetic with fixed constants: a polynomial hash mod 2^64 of each token's bytes,
a polynomial hash of the token hashes of each shingle, finished with the MurmurHash3 64-bit finaliser. They do
not depend on PYTHONHASHSEED, on the other texts in a batch, or on the numpy version, so stored signatures stay
valid across processes and releases. Everything runs as whole-array numpy operations over the batch.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NORMALISATION = "nfkc-casefold-punct-solo-v1"
_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_SEP = 0x20  # every separator byte is mapped to a space
_NO_SPACE_SCRIPTS = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3134F),  # CJK extensions B-G
)


def splitmix64(seed: int, count: int) -> list[int]:
    """``count`` pseudo-random 64-bit integers from ``seed``: fixed forever (pure Python integer arithmetic)."""
    out = []
    state = seed & _MASK64
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append(z ^ (z >> 31))
    return out


def fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, element-wise (a bijection that spreads every input bit)."""
    h = values ^ (values >> _U64(33))
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB9FE1A85EC53)
    h ^= h >> _U64(33)
    return h


_BYTE_VALUES = np.array(splitmix64(0x5EED_B17E, 256), dtype=np.uint64)
_TOKEN_BASE = splitmix64(0x70CE_BA5E, 1)[0] | 1  # odd, so invertible mod 2^64
_SHINGLE_BASE = splitmix64(0x5817_61E5, 1)[0] | 1


def _byte_map() -> np.ndarray:
    """ASCII letters lower-cased, ASCII digits kept, every other ASCII byte a separator, UTF-8 bytes kept."""
    table = np.full(256, _SEP, dtype=np.uint8)
    for b in range(256):
        ch = chr(b)
        if b >= 0x80 or ch.isdigit() or ch.islower():
            table[b] = b
        elif "A" <= ch <= "Z":
            table[b] = ord(ch.lower())
    return table


_BYTE_MAP = _byte_map()


class _Powers:
    """base^i and base^-i mod 2^64 for i < n, grown on demand (the polynomial hashes need them)."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.inverse = pow(base, -1, 1 << 64)
        self.up = np.ones(1, dtype=np.uint64)
        self.down = np.ones(1, dtype=np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.up) < n:
            size = max(n, 2 * len(self.up), 1 << 21)  # 2M: a default text batch never regrows it
            up = np.full(size, self.base, dtype=np.uint64)
            up[0] = 1
            self.up = np.cumprod(up)
            down = np.full(size, self.inverse, dtype=np.uint64)
            down[0] = 1
            self.down = np.cumprod(down)
        return self.up[:n], self.down[:n]


_TOKEN_POWERS = _Powers(_TOKEN_BASE)
_SHINGLE_POWERS = _Powers(_SHINGLE_BASE)


def _class(codepoints: list[int]) -> str:
    """A regex character class body for the code points, as ranges of \\U escapes."""
    parts = []
    start = prev = codepoints[0]
    for cp in [*codepoints[1:], -2]:
        if cp != prev + 1:
            parts.append(f"\\U{start:08x}" if start == prev else f"\\U{start:08x}-\\U{prev:08x}")
            start = cp
        prev = cp
    return "".join(parts)


_PLANES = (range(0x80, 0x40000), range(0xE0000, 0xE1000))  # assigned planes; the rest is unassigned or private


@functools.cache
def _unicode_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(separators, solo tokens) among non-ASCII characters; built once per process from unicodedata."""
    separators, solo, marks = [], [], []
    no_space = set().union(*(range(lo, hi + 1) for lo, hi in _NO_SPACE_SCRIPTS))
    for plane in _PLANES:
        for cp in plane:
            cat = unicodedata.category(chr(cp))
            if cat[0] in "PZ" or cat in ("Cc", "Cf"):
                separators.append(cp)
            elif cat[0] == "M":
                marks.append(cp)
            elif cat[0] == "S" or cp in no_space:
                solo.append(cp)
    return (
        re.compile(f"[{_class(separators)}]+"),
        re.compile(f"[{_class(solo)}][{_class(marks)}]*"),
    )


def _normalise_unicode(text: str) -> str:
    """The non-ASCII part of normalisation (ASCII is handled on bytes): per text, since it is slow."""
    text = unicodedata.normalize("NFKC", text).casefold()
    separators, solo = _unicode_patterns()
    return solo.sub(r" \g<0> ", separators.sub(" ", text))


def normalise(text: str) -> str:
    """The normalised text the tokens are read from (for explanations and tests; hashing works on bytes)."""
    text = _normalise_unicode(text)
    return " ".join(bytes(_BYTE_MAP[np.frombuffer(text.encode(), dtype=np.uint8)]).decode().split())


def tokens(text: str) -> list[str]:
    return normalise(text).split()


def _joined_bytes(texts: Sequence[str]) -> np.ndarray:
    """UTF-8 bytes of the normalised texts joined by NUL (the document boundary)."""
    joined = "\x00".join(texts)
    if joined.count("\x00") != len(texts) - 1:
        texts = [t.replace("\x00", " ") for t in texts]
        joined = "\x00".join(texts)
    if not joined.isascii():
        joined = "\x00".join(t if t.isascii() else _normalise_unicode(t) for t in texts)
    return np.frombuffer(joined.encode("utf-8", "surrogatepass"), dtype=np.uint8)


@dataclass(frozen=True)
class ShingleBatch:
    """Shingle hashes of a batch of texts: those of text ``i`` are ``hashes[offsets[i]:offsets[i + 1]]``.

    Repeated shingles within a text are kept (MinHash ignores them); use :meth:`sets` for the exact sets.
    """

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len(texts) + 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def of(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i] : self.offsets[i + 1]]

    def sets(self) -> list[frozenset[int]]:
        return [frozenset(self.of(i).tolist()) for i in range(len(self.offsets) - 1)]


def shingle_batch(texts: Sequence[str], ngram: int = 5) -> ShingleBatch:
    """Hash the shingles of every text (see the module docstring for what a token and a shingle are)."""
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    n_docs = len(texts)
    if n_docs == 0:
        return ShingleBatch(np.zeros(0, dtype=np.uint64), np.zeros(1, dtype=np.int64))
    raw = _joined_bytes(texts)
    boundaries = np.flatnonzero(raw == 0)
    data = _BYTE_MAP[raw]
    is_token = (data != _SEP).view(np.int8)
    edges = np.diff(np.concatenate(([0], is_token, [0])).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    token_hash = _span_hashes(_BYTE_VALUES[data], starts, ends, _TOKEN_POWERS)
    token_offsets = np.concatenate(([0], np.searchsorted(starts, boundaries), [len(starts)])).astype(np.int64)
    per_doc = np.diff(token_offsets)
    span = np.minimum(per_doc, ngram)
    n_shingles = np.where(per_doc >= ngram, per_doc - ngram + 1, np.minimum(per_doc, 1))
    offsets = np.concatenate(([0], np.cumsum(n_shingles))).astype(np.int64)
    total = int(offsets[-1])
    first = np.repeat(token_offsets[:-1], n_shingles) + (np.arange(total) - np.repeat(offsets[:-1], n_shingles))
    last = first + np.repeat(span, n_shingles)
    hashes = fmix64(_span_hashes(token_hash, first, last, _SHINGLE_POWERS))
    return ShingleBatch(hashes, offsets)


#: Texts per batch of :func:`word_counts` (its arrays take about 40 bytes per character: 1 GB for 200,000
#: responses of 120 characters at once).
COUNT_BATCH = 20_000


def word_counts(texts: Sequence[str]) -> np.ndarray:
    """The number of tokens of each text (``shingle_batch(texts, 1).counts``), a batch of texts at a time so the
    arrays of one batch, not of every text, are alive at once."""
    counts = [shingle_batch(texts[i : i + COUNT_BATCH], 1).counts for i in range(0, len(texts), COUNT_BATCH)]
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)


def _span_hashes(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, powers: _Powers) -> np.ndarray:
    """sum(values[j] * base^(end-1-j) for j in [start, end)) mod 2^64 for every span, via one prefix sum."""
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64)
    up, down = powers.get(len(values))
    prefix = np.zeros(len(values) + 1, dtype=np.uint64)
    np.cumsum(values * down, out=prefix[1:])
    return up[ends - 1] * (prefix[ends] - prefix[starts])


def exact_jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    """|a & b| / |a | b|; two empty sets are not similar (0.0): an empty text duplicates nothing."""
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)
