"""Build the two general-conversation sets Refinery ships, from public human-written data.

- ``eval/data/general_reference.jsonl``: the general-capability check's references (eval/general.py). Prompts
  with answers written by people, so the check asks "does the adapter still find ordinary human answers
  likely?", not "does it still find the base model's own answers likely?" (those are the text the base model
  finds most likely of all, so every specialised adapter drifts far from them: +76% to +179% measured).
- ``training/data/rehearsal.jsonl``: general conversations mixed into every LoRA run (training/rehearsal.py), so
  an adapter trained on a narrow task keeps answering ordinary requests.

The two are disjoint by source item (an OpenAssistant message tree, a Self-Instruct task): the check never
measures text the adapter was trained on. Sources (both Apache-2.0):
- OpenAssistant oasst1, 100 English message trees (LAION-AI/Open-Assistant @ f1e6ed9526f5,
  model/model_eval/manual/data/en_100_message.jsonl); trees and replies flagged synthetic or deleted are skipped,
  so every answer was written by a volunteer.
- Self-Instruct's 175 seed tasks and 252 user-oriented tasks, each with an instance written by the authors
  (yizhongw/self-instruct @ 0b26ccaa4159, data/seed_tasks.jsonl, human_eval/user_oriented_instructions.jsonl).

Run from the project root with the source files in ../shared/data (a developer's checkout has them; the product
never reads them): ``python scripts/build_general_sets.py [--data ../shared/data]``. The output is byte-identical
for the same inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_OUT = ROOT / "eval" / "data" / "general_reference.jsonl"
REHEARSAL_OUT = ROOT / "training" / "data" / "rehearsal.jsonl"
OASST = "oasst/en_100_message.jsonl"
SEED = "self_instruct/seed_tasks.jsonl"
USER = "self_instruct/user_oriented_instructions.jsonl"

#: Longest answer kept whole; a longer one is cut at its last sentence end before this many characters. Keeps the
#: check's cost and a rehearsal step's length bounded (banking77 conversations are about 45 tokens).
MAX_ANSWER_CHARS = 700
#: Conversations longer than this (all turns) are left out: a handful of long documents would dominate the tokens.
MAX_CONVERSATION_CHARS = 1600
#: Share of the source items that go to the reference set (the rest is rehearsal).
REFERENCE_SHARE = 0.5
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s)")


def _bucket(key: str) -> float:
    """A fixed pseudo-random number in [0, 1) per source item: the split never depends on file order."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / 16**12


def shorten(answer: str) -> tuple[str, bool]:
    """``answer`` whole when short enough, else cut after its last sentence end before MAX_ANSWER_CHARS."""
    text = answer.strip()
    if len(text) <= MAX_ANSWER_CHARS:
        return text, False
    ends = [m.end() for m in _SENTENCE_END.finditer(text[: MAX_ANSWER_CHARS + 1])]
    if not ends or ends[-1] < MAX_ANSWER_CHARS // 3:  # no sentence end early enough: cut at a word boundary
        cut = text[:MAX_ANSWER_CHARS].rsplit(" ", 1)[0]
        return cut.rstrip(",;:") + " ...", True
    return text[: ends[-1]].strip(), True


def _human(node: dict[str, Any]) -> bool:
    return not node.get("synthetic") and not node.get("deleted") and node.get("lang", "en") == "en"


def _oasst_paths(node: dict[str, Any], history: list[dict[str, str]]) -> Iterator[list[dict[str, str]]]:
    """Every conversation from the root to an assistant reply, best-ranked replies first."""
    role = "user" if node["role"] == "prompter" else "assistant"
    turns = [*history, {"role": role, "content": node["text"].strip()}]
    if role == "assistant":
        yield turns
    replies = [r for r in node.get("replies") or [] if _human(r)]
    replies.sort(key=lambda r: (r.get("rank") is None, r.get("rank") or 0))
    for reply in replies:
        yield from _oasst_paths(reply, turns)


def _item(source_id: str, source: str, messages: list[dict[str, str]]) -> dict[str, Any] | None:
    answer, cut = shorten(messages[-1]["content"])
    if not answer or any(not m["content"] for m in messages[:-1]):
        return None
    messages = [*messages[:-1], {"role": "assistant", "content": answer}]
    if sum(len(m["content"]) for m in messages) > MAX_CONVERSATION_CHARS:
        return None
    return {"id": source_id, "source": source, "license": "Apache-2.0", "shortened": cut, "messages": messages}


def oasst_items(path: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(tree key, its conversations) per human-written tree; the reference set uses only first turns."""
    for line in path.read_text(encoding="utf-8").splitlines():
        tree = json.loads(line)
        if not _human(tree) or tree.get("role") != "prompter":
            continue
        items = []
        for number, turns in enumerate(_oasst_paths(tree, [])):
            item = _item(f"oasst:{tree['message_id']}:{number}", "oasst1 en_100_message", turns)
            if item is not None:
                items.append(item)
        if items:
            yield f"oasst:{tree['message_id']}", items


def self_instruct_items(path: Path, source: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    for line in path.read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        instance = task["instances"][0]
        prompt = task["instruction"].strip()
        if instance["input"].strip():
            prompt = f"{prompt}\n\n{instance['input'].strip()}"
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": instance["output"]}]
        item = _item(f"self_instruct:{task['id']}", source, turns)
        if item is not None:
            yield f"self_instruct:{task['id']}", [item]


def build(data: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(reference items, rehearsal items), split by source item."""
    reference: list[dict[str, Any]] = []
    rehearsal: list[dict[str, Any]] = []
    groups = [
        *oasst_items(data / OASST),
        *self_instruct_items(data / SEED, "self-instruct seed_tasks"),
        *self_instruct_items(data / USER, "self-instruct user_oriented_instructions"),
    ]
    for key, items in sorted(groups, key=lambda g: _bucket(g[0])):
        if _bucket("reference:" + key) < REFERENCE_SHARE:
            # one conversation per tree: its first turn with the best-ranked human answer (a fair, single probe)
            first = [i for i in items if len(i["messages"]) == 2]
            reference.extend(first[:1])
        else:
            seen_prompts = set()
            for item in items:  # a tree's conversations share their opening: keep distinct final prompts
                prompt = item["messages"][-2]["content"]
                if prompt not in seen_prompts:
                    seen_prompts.add(prompt)
                    rehearsal.append(item)
    return reference, rehearsal


def _write(path: Path, items: list[dict[str, Any]]) -> str:
    body = "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    for name in (OASST, SEED, USER):
        if not (args.data / name).is_file():
            raise SystemExit(f"missing source file {args.data / name}")
    reference, rehearsal = build(args.data)
    for label, path, items in (("reference", REFERENCE_OUT, reference), ("rehearsal", REHEARSAL_OUT, rehearsal)):
        digest = _write(path, items)
        by_source: dict[str, int] = {}
        for item in items:
            by_source[item["source"]] = by_source.get(item["source"], 0) + 1
        chars = sum(len(m["content"]) for i in items for m in i["messages"])
        print(f"{label}: {len(items)} conversations, {chars} chars, sha256 {digest} -> {path.relative_to(ROOT)}")
        for source, count in sorted(by_source.items()):
            print(f"  {source}: {count}")
    for name in (OASST, SEED, USER):
        print(f"source {name}: sha256 {hashlib.sha256((args.data / name).read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
