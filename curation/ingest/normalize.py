"""Drafted units -> canonical ``schemas.records.Record``: template, normalisation and conversation rules.

Rules, for every format alike (positions in reasons are 1-based message numbers):
- system messages only at the start;
- then user and assistant alternate, starting with user;
- a tool message only after an assistant message (or another tool message: parallel tool results), and an
  assistant message must follow;
- no message may be empty once normalised (``normalize_content``);
- training data must end with an assistant message; an eval set may hold prompt-only units (ending with
  the user).
"""

from __future__ import annotations

from curation.ingest.templates import Template, TemplateFieldMissing
from curation.ingest.units import Draft, UnitError, is_encodable
from schemas.records import BatchPurpose, Message, Record, Role, normalize_content

_NEXT: dict[str, frozenset[str]] = {
    "user": frozenset({"assistant"}),
    "assistant": frozenset({"user", "tool"}),
    "tool": frozenset({"assistant", "tool"}),
}


def check_role_order(roles: list[str], purpose: BatchPurpose) -> None:
    """Raise ``UnitError`` naming the first role-order problem of a conversation."""
    if not roles:
        raise UnitError("empty conversation")
    prev: str | None = None
    for i, role in enumerate(roles, start=1):
        if role == "system":
            if prev not in (None, "system"):
                raise UnitError(f"role order: system follows {prev} at message {i}")
        elif prev in (None, "system"):
            if role != "user":
                raise UnitError(f"role order: conversation starts with {role} at message {i}")
        elif prev is not None and role not in _NEXT[prev]:
            raise UnitError(f"role order: {role} follows {prev} at message {i}")
        prev = role
    last = roles[-1]
    if last == "system":
        raise UnitError("no user message")
    if last == "tool":
        raise UnitError("role order: conversation ends with a tool message")
    if last == "user" and purpose is BatchPurpose.TRAIN:
        raise UnitError("no assistant reply (prompt-only rows are accepted only in eval sets)")


def apply_template(turns: list[tuple[str, str]], draft: Draft, template: Template) -> list[tuple[str, str]]:
    """The first user message rendered through the template; the others untouched."""
    for i, (role, content) in enumerate(turns):
        if role == "user":
            try:
                rendered = template.render(content, draft.fields)
            except TemplateFieldMissing as exc:
                raise UnitError(f"template field '{exc.args[0]}' missing from the row") from None
            return [*turns[:i], (role, rendered), *turns[i + 1 :]]
    return turns


def build_record(draft: Draft, purpose: BatchPurpose, template: Template | None) -> Record:
    """The canonical record of a draft, or ``UnitError`` with the quarantine reason."""
    turns = apply_template(draft.turns, draft, template) if template is not None else draft.turns
    check_role_order([role for role, _ in turns], purpose)
    messages = []
    for i, (role, content) in enumerate(turns, start=1):
        text = normalize_content(content)
        if not text:
            raise UnitError(f"empty {role} message at message {i}")
        if not is_encodable(text):
            raise UnitError(f"message {i} contains an unpaired surrogate (not valid Unicode)")
        # Already canonical (normalize_content above): skip re-validation, it is the hot path of ingest.
        messages.append(Message.model_construct(role=Role(role), content=text))
    label = normalize_content(draft.label) if draft.label is not None else None
    return Record.from_messages(messages, label=label or None, metadata=draft.metadata)
