"""General-capability regression check: does the adapter make the model worse at ordinary requests?

The check measures how likely the model finds answers written by people to general prompts, before and after the
adapter: the mean token loss of those answers under the adapter against the base model's. An adapter that forgot
how to answer in general (it answers every prompt with a label, or its weights were damaged) finds ordinary human
answers much less likely, and a relative rise above ``max_regression`` fails the gate.

The references ship inside the package (``eval/data/general_reference.jsonl``, 256 conversations: OpenAssistant
oasst1 volunteers' answers and Self-Instruct's author-written instances, Apache-2.0; provenance, license and the
script that made it in ``eval/data/README.md``), so the check needs nothing beside the product. They are disjoint
from the rehearsal conversations the training recipe mixes in (``training/data/rehearsal.jsonl``).

Why human answers and not the base model's own: those are the text the base model finds most likely of all, so
every specialised adapter drifts far from them. Measured with SmolLM2-135M and two intent adapters (accuracy
0.94 and 0.99): +76% and +179% on the base model's answers to MT-Bench, +21% and +57% on human answers
(docs/EVAL.md has the calibration of the threshold).
"""

from __future__ import annotations

import contextlib
import hashlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from eval.gate import RegressionCheck
from eval.generation import Model, Tokenizer
from eval.loss import reference_losses
from schemas.conversations import Conversation, conversation_from_messages, jsonl_lines, packaged_bytes

#: The shipped reference set and the SHA-256 of its bytes (checked on every load: a damaged file is an error).
SHIPPED_SET = "general_reference.jsonl"
SHIPPED_SHA256 = "4372c0b3591e37ae41439487aec7ee22357a58664f0370b003a3e8f0ba253d95"
#: Keys a line may carry its prompt and reference answer under, besides ``messages`` (last turn = the answer).
PROMPT_KEYS = ("prompt", "instruction", "question")
ANSWER_KEYS = ("response", "answer", "output", "reference")


class GeneralSetError(ValueError):
    """The general set cannot be used (missing or damaged file, a line without a prompt or a reference answer)."""


class GeneralConfig(BaseModel):
    """Which general set the regression check uses and how much of it."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="False skips the check (the verdict says so).")
    path: str | None = Field(
        default=None,
        description="JSONL of general conversations with reference answers written by people: `messages` (the last "
        "turn is the assistant's reference) or a prompt key (prompt/instruction/question) with an answer key "
        "(response/answer/output/reference). Default: the set shipped in the package (256 conversations from "
        "OpenAssistant and Self-Instruct, Apache-2.0).",
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        description="Use the first N conversations of the set (its order is a fixed shuffle); None = all of them.",
    )
    batch_size: int = Field(default=8, ge=1, description="Conversations per loss pass.")


@dataclass(frozen=True)
class GeneralSet:
    """Prompts (as conversations) with their human reference answers, and where they came from."""

    name: str
    conversations: list[Conversation]
    references: list[str]
    sha256: str  # of the file's bytes

    def __len__(self) -> int:
        return len(self.references)


def _parse_line(line: dict[str, Any]) -> tuple[Conversation, str] | None:
    messages = line.get("messages")
    if isinstance(messages, list) and len(messages) >= 2:
        turns = conversation_from_messages(messages)
        return None if turns is None else (turns[:-1], turns[-1]["content"])
    prompt = next((line[k] for k in PROMPT_KEYS if isinstance(line.get(k), str) and line[k].strip()), None)
    answer = next((line[k] for k in ANSWER_KEYS if isinstance(line.get(k), str) and line[k].strip()), None)
    if prompt is None or answer is None:
        return None
    return [{"role": "user", "content": prompt}], answer


def parse_general_set(data: bytes, name: str, limit: int | None = None) -> GeneralSet:
    """The conversations and references of a general-set file's bytes (the first ``limit`` lines with content)."""
    conversations: list[Conversation] = []
    references: list[str] = []
    for number, line in jsonl_lines(data, name, GeneralSetError, "general set"):
        parsed = _parse_line(line) if isinstance(line, dict) else None
        if parsed is None:
            raise GeneralSetError(
                f"{name}:{number}: no prompt with a reference answer (expected `messages` ending with an assistant "
                f"turn, or one of {', '.join(PROMPT_KEYS)} with one of {', '.join(ANSWER_KEYS)}); the check needs "
                "answers written by people, so a prompts-only file such as MT-Bench's questions cannot serve"
            )
        conversations.append(parsed[0])
        references.append(parsed[1])
        if limit is not None and len(references) >= limit:
            break
    if not references:
        raise GeneralSetError(f"general set {name} has no conversations")
    return GeneralSet(name, conversations, references, hashlib.sha256(data).hexdigest())


def shipped_set_bytes() -> bytes:
    """The packaged reference set, verified against its recorded SHA-256."""
    return packaged_bytes("eval", SHIPPED_SET, SHIPPED_SHA256, GeneralSetError, "general reference set")


def load_general_set(path: Path | str | None = None, limit: int | None = None) -> GeneralSet:
    """The general set at ``path``, or the shipped one when ``path`` is None."""
    if path is None:
        return parse_general_set(shipped_set_bytes(), f"refinery:{SHIPPED_SET}", limit)
    file = Path(path)
    if not file.is_file():
        raise GeneralSetError(f"general set {file} does not exist")
    return parse_general_set(file.read_bytes(), str(file), limit)


def skipped(reason: str, general_set: str | None = None) -> RegressionCheck:
    return RegressionCheck(status="skipped", reason=reason, general_set=general_set)


def regression_check(
    model: Model,
    tokenizer: Tokenizer,
    base_only: Callable[[], contextlib.AbstractContextManager[Any]],
    general: GeneralSet,
    config: GeneralConfig,
    max_regression: float,
) -> RegressionCheck:
    """Mean token loss of the human reference answers under the adapter vs under the base model.

    ``model`` runs with the adapter; inside ``base_only()`` it runs as the base model.
    """
    started = time.perf_counter()
    convs, refs = general.conversations, general.references
    with base_only():
        base = reference_losses(model, tokenizer, convs, refs, config.batch_size, "general loss (base)")
    adapted = reference_losses(model, tokenizer, convs, refs, config.batch_size, "general loss (adapter)")
    base_mean, adapted_mean = base.mean, adapted.mean
    change = adapted_mean / base_mean - 1.0 if base_mean > 0 else 0.0
    per_example = [a / b - 1.0 for a, b in zip(adapted.per_example, base.per_example, strict=True) if b > 0]
    failed = change > max_regression
    reason = (
        f"mean token loss of the human answers to {len(general)} general prompts ({general.name}) went from "
        f"{base_mean:.3f} (base) to {adapted_mean:.3f} (adapter), {change:+.1%} "
        f"{'above' if failed else 'within'} the allowed {max_regression:+.0%}"
    )
    return RegressionCheck(
        status="fail" if failed else "pass",
        reason=reason,
        general_set=general.name,
        general_set_hash=general.sha256,
        n_prompts=len(general),
        base_loss=base_mean,
        adapter_loss=adapted_mean,
        relative_change=change,
        median_example_change=statistics.median(per_example) if per_example else None,
        max_regression=max_regression,
        seconds=time.perf_counter() - started,
    )
