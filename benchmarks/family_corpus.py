"""The heavy-family corpus of B2f: Toolformer records copied into families of 2 to 1,000 members (Zipf-like).

Real corpora hold big families of near-duplicates: templated prompts, one tool description in thousands of
rows, scraped pages repeated with small edits. This generator builds them from the GPTeacher Toolformer file in
``../shared/data``: a family draws one Toolformer record at random (several families may draw the same one,
and Toolformer records already share long tool descriptions, so families also touch each other), and each
member is that record with about 10% of its output words replaced by words of other records and a unique
suffix. Family sizes follow ``P(s) ~ s^-2`` on [2, 1000]: a mean of about 10, and about a third of the records
in families of 100 or more. Seeded: the same ``(n, seed)`` gives the same records.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from dedup_common import toolformer

MIN_FAMILY, MAX_FAMILY, ZIPF_EXPONENT = 2, 1000, 2.0
REPLACED = 0.1  # share of output words replaced in each member


@dataclass(frozen=True)
class FamilyCorpus:
    rows: list[dict[str, str]]  # alpaca rows: instruction, input, output
    family: list[int]  # family index of each row
    base: list[int]  # the Toolformer record each family copies


def family_sizes(rng: random.Random, n: int) -> list[int]:
    """Zipf-like sizes on [MIN_FAMILY, MAX_FAMILY] adding up to exactly ``n`` (the last one is cut)."""
    sizes = list(range(MIN_FAMILY, MAX_FAMILY + 1))
    cumulative = list(itertools.accumulate(s**-ZIPF_EXPONENT for s in sizes))
    out: list[int] = []
    total = 0
    while total < n:
        size = min(rng.choices(sizes, cum_weights=cumulative)[0], n - total)
        out.append(size)
        total += size
    return out


def generate_families(n: int, seed: int = 0) -> FamilyCorpus:
    source = toolformer()
    vocabulary = sorted({w for r in source for w in r["output"].split()})
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    family: list[int] = []
    bases: list[int] = []
    for f, size in enumerate(family_sizes(rng, n)):
        base = rng.randrange(len(source))
        bases.append(base)
        record = source[base]
        words = record["output"].split(" ")
        for _ in range(size):
            edited = [rng.choice(vocabulary) if rng.random() < REPLACED else w for w in words]
            suffix = f"ref {len(rows):07d}-{rng.getrandbits(32):08x}"
            rows.append({"instruction": record["instruction"], "input": record["input"], "output": " ".join(edited)})
            rows[-1]["output"] += f"\n{suffix}"
            family.append(f)
    return FamilyCorpus(rows, family, bases)
