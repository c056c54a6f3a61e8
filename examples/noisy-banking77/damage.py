"""Plant known damage in a banking77 training sample and write it as CSV, with the truth beside it.

Usage: python damage.py TRAIN_CSV OUT_DIR [--per-intent 40] [--seed 0]

From every intent, the first ``--per-intent`` training queries in SHA-256 order of their text (a deterministic
sample that keeps the 77 intents balanced) are taken; then, seeded:

- 10% of them get a uniformly random *other* intent (``flipped``);
- 10% more rows are near-duplicate paraphrase copies of sampled rows, label kept (a greeting, a filler or a
  sign-off added, the case changed: ``near_dup_copy``);
- 2% of the rows get an empty answer (``empty``, which ingest quarantines) or an answer cut short, the intent name
  truncated (``truncated``), half each.

OUT_DIR/train.csv holds text,category (the damaged set, shuffled); OUT_DIR/truth.csv holds, per row of train.csv,
the damage kind (or ``clean``), the true intent and, for a copy, the text it copies.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
from collections import defaultdict
from pathlib import Path

PREFIXES = ("hi, ", "hello, ", "hey, ", "excuse me, ", "quick question: ")
SUFFIXES = (" please", " thanks", " thank you", " asap", " urgently")


def _paraphrase(text: str, rng: random.Random) -> str:
    """A near-duplicate copy: one prefix or suffix added, and sometimes the case lowered."""
    body = text.strip()
    if rng.random() < 0.5:
        body = rng.choice(PREFIXES) + body[0].lower() + body[1:]
    else:
        stop = body[-1] if body[-1] in "?.!" else ""
        body = body[: len(body) - len(stop)] + rng.choice(SUFFIXES) + stop
    return body.lower() if rng.random() < 0.3 else body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train_csv", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--per-intent", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    by_intent: dict[str, list[str]] = defaultdict(list)
    with args.train_csv.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_intent[row["category"]].append(row["text"])
    intents = sorted(by_intent)
    rows: list[dict[str, str]] = []
    for intent in intents:
        texts = sorted(set(by_intent[intent]), key=lambda t: hashlib.sha256(t.encode()).hexdigest())
        rows += [{"text": t, "category": intent, "damage": "clean", "true": intent, "copy_of": ""}
                 for t in texts[: args.per_intent]]  # fmt: skip
    rng = random.Random(args.seed)
    n = len(rows)
    order = list(range(n))
    rng.shuffle(order)
    flip, short = order[: n // 10], order[n // 10 : n // 10 + n // 50]
    for i in flip:
        rows[i]["category"] = rng.choice([x for x in intents if x != rows[i]["true"]])
        rows[i]["damage"] = "flipped"
    for j, i in enumerate(short):
        if j % 2 == 0:
            rows[i]["category"], rows[i]["damage"] = "", "empty"
        else:
            label = rows[i]["true"]
            rows[i]["category"] = label[: rng.randint(max(1, len(label) // 3), len(label) - 2)]
            rows[i]["damage"] = "truncated"
    copies = []
    for i in rng.sample(range(n), n // 10):
        src = rows[i]
        copies.append({**src, "text": _paraphrase(src["text"], rng), "damage": "near_dup_copy", "copy_of": src["text"]})
    rows += copies
    rng.shuffle(rows)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with (args.out_dir / "train.csv").open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["text", "category"])
        out.writerows([r["text"], r["category"]] for r in rows)
    with (args.out_dir / "truth.csv").open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["row", "text", "category", "damage", "true_category", "copy_of"])
        out.writerows(
            [k + 2, r["text"], r["category"], r["damage"], r["true"], r["copy_of"]] for k, r in enumerate(rows)
        )
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r["damage"]] += 1
    print(
        f"{len(rows)} rows from {len(intents)} intents x {args.per_intent}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )


if __name__ == "__main__":
    main()
