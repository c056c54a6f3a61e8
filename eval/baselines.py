"""The prompts each system sees.

- adapter: the example's own messages, unchanged (the adapter was fine-tuned on that format);
- base zero-shot: an instruction (with the label set for classification) as the system turn, then the example;
- base few-shot: the same instruction, then k solved training examples as prior user/assistant turns, then
  the example. Prior chat turns, not examples written inline: a small chat model follows them far better
  (measured on banking77 with SmolLM2-135M: 20% vs 0% accuracy).

Shots are drawn once per eval run from the training split by a seeded hash, stratified by label, so every
example gets the same shots (and the same prompt prefix) and the draw is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from eval.examples import EvalExample, EvalTask, TaskKind
from eval.metrics import normalize_answer
from schemas.ids import canonical_json, sha256_text

Messages = list[dict[str, str]]


def task_instruction(task: EvalTask) -> str:
    """The instruction given to the base model: the task's own, or a generic one for its kind, plus the label
    set (classification) or the field names (extraction)."""
    if task.has_labels:
        head = task.instruction or "Classify the customer message into exactly one of the following labels."
        listed = "\n".join(f"- {label}" for label in task.labels)
        return f"{head}\n\nLabels:\n{listed}"
    if task.kind is TaskKind.EXTRACTION:
        head = task.instruction or "Extract the requested information from the message below."
        listed = "\n".join(f"- {name}" for name in task.fields)
        return f"{head}\n\nFields:\n{listed}" if task.fields else head
    if task.kind is TaskKind.FREE_FORM:
        return task.instruction or "Answer the request below helpfully and concisely."
    return task.instruction or "Answer the request below with the exact answer only."


def _answer_format(task: EvalTask) -> str:
    if task.has_labels:
        return "Answer with the label only, written exactly as in the list, and nothing else."
    if task.kind is TaskKind.EXTRACTION:
        return (
            "Answer with one JSON object only, with exactly these fields as keys (null when the message does not "
            "say), and nothing else."
        )
    if task.kind is TaskKind.FREE_FORM:
        return "Answer directly, without repeating the request."
    return "Answer with the exact answer only, and nothing else."


def _with_system(instruction: str, messages: Sequence[dict[str, str]]) -> Messages:
    # One system turn: the instruction first, then whatever system text the example carried.
    system = [m["content"] for m in messages if m["role"] == "system"]
    content = "\n\n".join([instruction, *system])
    return [{"role": "system", "content": content}]


def _dialogue(messages: Sequence[dict[str, str]]) -> Messages:
    return [dict(m) for m in messages if m["role"] != "system"]


def adapter_messages(example: EvalExample) -> Messages:
    return example.messages_as_list()


def zero_shot_messages(example: EvalExample, task: EvalTask) -> Messages:
    """The instruction, label set and answer format as the system turn, then the example's dialogue.

    A system turn rather than wrapping the user message: on banking77 (SmolLM2-135M, 10 labels, 30 examples)
    label ranking scored 27% with it and 10% with the instruction inside the user turn; free generation was
    0% either way (the model answers the customer instead of labelling).
    """
    instruction = f"{task_instruction(task)}\n\n{_answer_format(task)}"
    return _with_system(instruction, example.messages) + _dialogue(example.messages)


def few_shot_messages(example: EvalExample, shots: Sequence[EvalExample], task: EvalTask | None = None) -> Messages:
    """The task instruction (when a task is given), each shot as user turn(s) + its answer, then the example."""
    messages: Messages = []
    if task is not None:
        messages += _with_system(f"{task_instruction(task)}\n\n{_answer_format(task)}", example.messages)
    else:
        messages += [dict(m) for m in example.messages if m["role"] == "system"]
    for shot in shots:
        messages += _dialogue(shot.messages)
        messages.append({"role": "assistant", "content": shot.reference})
    return messages + _dialogue(example.messages)


def _shot_key(example: EvalExample, seed: int) -> str:
    identity = example.record_id or canonical_json([dict(m) for m in example.messages])
    return sha256_text(f"{seed}:{identity}")


def _prompt_identity(example: EvalExample) -> str:
    return canonical_json(_dialogue(example.messages))


def select_shots(
    pool: Sequence[EvalExample],
    k: int,
    seed: int = 0,
    task: EvalTask | None = None,
    exclude: Iterable[EvalExample] = (),
) -> list[EvalExample]:
    """Draw ``k`` shots from the training pool, deterministically.

    Each candidate gets a seeded hash of its identity; candidates are taken in hash order. With a label set,
    the draw is stratified: one shot per label (labels ordered by their best hash) before any label gets a
    second, so k >= number of labels covers every label. Candidates equal to an eval example (same record id
    or same prompt) are never drawn: a shot must not hand the base model the answer.
    """
    if k < 0:
        raise ValueError("k must be non-negative")
    banned_ids = set()
    banned_prompts = set()
    for e in exclude:
        if e.record_id:
            banned_ids.add(e.record_id)
        banned_prompts.add(_prompt_identity(e))
    candidates = [
        e for e in pool if not (e.record_id and e.record_id in banned_ids) and _prompt_identity(e) not in banned_prompts
    ]
    candidates.sort(key=lambda e: _shot_key(e, seed))
    if task is None or not task.has_labels:
        return candidates[:k]

    known = {normalize_answer(label) for label in task.labels}
    by_label: dict[str, list[EvalExample]] = {}
    for e in candidates:  # already in hash order, so each list is too, and dict order = best-hash order
        key = normalize_answer(e.reference)
        if key in known:
            by_label.setdefault(key, []).append(e)
    chosen: list[EvalExample] = []
    depth = 0
    while len(chosen) < k and any(depth < len(v) for v in by_label.values()):
        for members in by_label.values():
            if depth < len(members) and len(chosen) < k:
                chosen.append(members[depth])
        depth += 1
    # Present in hash order rather than grouped by label, so no label is systematically last (recency bias).
    chosen.sort(key=lambda e: _shot_key(e, seed))
    return chosen
