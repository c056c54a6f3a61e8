"""A corpus of any size, shaped like a real one, with planted near-duplicate families and known truth (no data needed).

Each file of the corpus is generated on its own from ``(seed, record number)`` alone, so the files can be made by
parallel tasks and any record can be regenerated to check the truth. Record ``r``:

- **prompt**: one of 40 instruction templates (``Template 7: rewrite the passage below for a newsletter.``), drawn
  for the record (for a planted member, for its head): every record shares its first shingles with a fortieth of
  the corpus, as templated datasets do;
- **response**: 80 words from a vocabulary of 30,000 pseudo-words with Zipf frequencies (s=1.1; the commonest words
  are in most texts, as in real text);
- **duplicates**: 30% of the records are near-copies of a family head: the head's 80 words with one word replaced
  at a random position (a member's exact Jaccard with the head is about 0.88, between two members 0.78-1.0: every
  planted pair is above the 0.7 threshold). Heads are drawn as ``floor(H * u^3)`` of ``H = n / 40`` heads: family
  sizes are skewed, from 1 to a few percent of the corpus (the biggest family at 10M holds about 45,000 records),
  so big families and many small ones coexist, as with boilerplate and templated answers.

``family[r]`` is the head of a planted member and ``-1`` for the others; a planted pair is two members of one family.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = 80
VOCABULARY = 30_000
TEMPLATES = 40
DUPLICATE_SHARE = 0.3
HEADS_PER = 40  # records per family head
_GOLDEN = np.uint64(0x9E37_79B9_7F4A_7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (splitmix64's): uniform bits from consecutive integers."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58_476D_1CE4_E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D0_49BB_1331_11EB)
    x ^= x >> np.uint64(31)
    return x


def _uniform(seed: int, stream: int, values: np.ndarray) -> np.ndarray:
    """A uniform draw in [0, 1) per value, the same for the same (seed, stream, value)."""
    salt = np.uint64(((seed * 1_000_003 + stream) * 0xD6E8_FEB8_6659_FD93) % (1 << 64))
    key = values.astype(np.uint64) * _GOLDEN + salt
    return (_mix(key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _vocabulary() -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-words (letters only, 3-9 long) and the cumulative Zipf weights of their ranks."""
    rng = np.random.default_rng(7)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(3, 10, size=VOCABULARY)
    words = np.array(["".join(rng.choice(letters, size=k)) for k in lengths], dtype=object)
    weights = 1.0 / np.arange(1, VOCABULARY + 1) ** 1.1
    return words, np.cumsum(weights) / weights.sum()


def family_of(n: int, seed: int, rows: np.ndarray) -> np.ndarray:
    """The family head of each record of ``rows`` (-1: not a planted duplicate)."""
    heads = max(1, n // HEADS_PER)
    planted = _uniform(seed, 1, rows) < DUPLICATE_SHARE
    head = np.floor(heads * _uniform(seed, 2, rows) ** 3).astype(np.int64)
    return np.where(planted, head, -1)


def _words(seed: int, stream: int, owners: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    """``WORDS`` word indices per owner, Zipf-distributed."""
    slots = owners.astype(np.uint64)[:, None] * np.uint64(WORDS) + np.arange(WORDS, dtype=np.uint64)[None, :]
    return np.searchsorted(cumulative, _uniform(seed, stream, slots.ravel())).reshape(len(owners), WORDS)


def generate_file(n: int, seed: int, first: int, rows: int, path: Path) -> int:
    """Records ``first .. first + rows - 1`` of the corpus of ``n`` into ``path`` (Parquet); returns ``rows``."""
    words, cumulative = _vocabulary()
    words = np.append(words, "")
    number = np.arange(first, first + rows, dtype=np.int64)
    family = family_of(n, seed, number)
    planted = family >= 0
    index = _words(seed, 3, number, cumulative)  # a record's own words
    index[planted] = _words(seed, 4, family[planted], cumulative)  # a member: its head's words...
    position = (_uniform(seed, 5, number) * WORDS).astype(np.int64)
    replacement = np.searchsorted(cumulative, _uniform(seed, 6, number))
    members = np.flatnonzero(planted)
    index[members, position[members]] = replacement[members]  # ...with one replaced
    owner = np.where(planted, family + (1 << 40), number)  # a member asks its head's question
    template = (_uniform(seed, 7, owner) * TEMPLATES).astype(np.int64)
    prompts = [
        f"Template {t}: rewrite the passage below for a newsletter, keeping every fact." for t in template.tolist()
    ]
    table = words[index]
    responses = [" ".join(row) for row in table.tolist()]
    ids = [f"r{r:010d}" for r in number.tolist()]
    partial = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table({"record_id": ids, "prompt": prompts, "response": responses}), partial)
    partial.replace(path)
    return rows


def planted_pairs(family: np.ndarray) -> int:
    """Planted pairs among records with these families."""
    sizes = np.bincount(family[family >= 0])
    return int((sizes * (sizes - 1) // 2).sum())
