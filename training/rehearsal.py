"""Rehearsal: general conversations mixed into every LoRA run, so a narrow adapter keeps answering in general.

A LoRA trained only on label answers learns to answer everything with a label: on SmolLM2-135M two intent
adapters raised the loss of human answers to general prompts by 21% and 57% (docs/EVAL.md). Mixing a share of
ordinary conversations into the training data is the usual remedy (rehearsal, or replay, against catastrophic
forgetting). The conversations ship in the package (``training/data/rehearsal.jsonl``: 300 conversations written by
OpenAssistant volunteers and the Self-Instruct authors, Apache-2.0; ``training/data/README.md`` has provenance,
license and the script that made it), disjoint from the general-capability check's references in ``eval/data``.

``share`` is the fraction of the mixed training set that is general: n_general = round(share * n_task / (1 - share)).
When that exceeds the set, conversations repeat (each full pass a fresh seeded shuffle), and the result says how
many were unique. The adapter's manifest records the share, the counts and the set's SHA-256.

Each general conversation weighs like an average task example in the loss (``weighting: example``), whatever its
length: a general answer holds about 150 tokens against a label's 4, so with plain per-token weighting one general
conversation in a batch of eight outweighs the seven task examples together, and at a 0.1 share most steps would
train mostly on general text (on the tiny test model the task was not learned at all that way).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from schemas.conversations import Conversation, conversation_from_messages, jsonl_lines, packaged_bytes

#: The packaged rehearsal set and the SHA-256 of its bytes (checked on load).
SHIPPED_SET = "rehearsal.jsonl"
SHIPPED_SHA256 = "0e4d9c015b9266c808f8a449f76fe05581dc0f356f900efcee249cab800ca15b"


class RehearsalSetError(ValueError):
    """The rehearsal set cannot be used (missing or damaged file, a line that is not a conversation)."""


@dataclass(frozen=True)
class RehearsalMix:
    """What rehearsal added to a run (stored in the adapter manifest)."""

    share: float
    task_conversations: int
    general_conversations: int
    unique_general: int
    eligible_general: int  # conversations of the set short enough to be drawn
    source: str
    sha256: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_rehearsal_set(data: bytes, name: str) -> list[Conversation]:
    """The conversations of a JSONL file (``{"messages": [...]}`` per line, ending with an assistant turn)."""
    conversations = []
    for number, line in jsonl_lines(data, name, RehearsalSetError, "rehearsal set"):
        conversation = conversation_from_messages(line.get("messages") if isinstance(line, dict) else None)
        if conversation is None:
            raise RehearsalSetError(f'{name}:{number}: expected {{"messages": [...]}} ending with an assistant turn')
        conversations.append(conversation)
    if not conversations:
        raise RehearsalSetError(f"rehearsal set {name} has no conversations")
    return conversations


def load_rehearsal_set(path: Path | str | None = None) -> tuple[list[Conversation], str, str]:
    """(conversations, name, sha256) of the set at ``path``, or of the shipped set (verified) when None."""
    if path is None:
        data = packaged_bytes("training", SHIPPED_SET, SHIPPED_SHA256, RehearsalSetError, "rehearsal set")
        name = f"refinery:{SHIPPED_SET}"
        digest = SHIPPED_SHA256
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise RehearsalSetError(f"rehearsal set {file} does not exist (rehearsal.path in the training config)")
        data, name = file.read_bytes(), str(file)
        digest = hashlib.sha256(data).hexdigest()
    return parse_rehearsal_set(data, name), name, digest


def general_count(share: float, task_conversations: int) -> int:
    """How many general conversations make ``share`` of a mixed set with ``task_conversations`` task ones."""
    if not 0 <= share < 1:
        raise ValueError("share must be in [0, 1)")
    return round(share * task_conversations / (1 - share))


def draw_rehearsal(
    task_conversations: int,
    share: float,
    seed: int,
    path: Path | str | None = None,
    fits: Callable[[Conversation], bool] | None = None,
) -> tuple[list[Conversation], RehearsalMix]:
    """The general conversations that make up ``share`` of a set with ``task_conversations`` task ones (seeded),
    drawn from those of the set that ``fits`` accepts (all when None)."""
    wanted = general_count(share, task_conversations)
    if wanted == 0:
        return [], RehearsalMix(share, task_conversations, 0, 0, 0, "none", None)
    pool, name, digest = load_rehearsal_set(path)
    eligible = [c for c in pool if fits is None or fits(c)]
    if not eligible:
        raise RehearsalSetError(f"no conversation of the rehearsal set {name} fits rehearsal.max_tokens")
    rng = random.Random(f"rehearsal:{seed}")
    drawn: list[Conversation] = []
    while len(drawn) < wanted:  # every conversation once before any repeats
        order = list(range(len(eligible)))
        rng.shuffle(order)
        drawn.extend(eligible[i] for i in order[: wanted - len(drawn)])
    unique = min(wanted, len(eligible))
    return drawn, RehearsalMix(share, task_conversations, wanted, unique, len(eligible), name, digest)
