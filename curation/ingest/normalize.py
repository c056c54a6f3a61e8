"""Drafted units -> canonical records (as their catalog rows, ``RecordRow``): template, normalisation and rules.

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
from curation.ingest.units import Draft, RecordRow, UnitError, is_encodable
from schemas.ids import canonical_json, record_id_and_messages_json
from schemas.records import BatchPurpose, normalize_content

_NEXT: dict[str, frozenset[str]] = {
    "user": frozenset({"assistant"}),
    "assistant": frozenset({"user", "tool"}),
    "tool": frozenset({"assistant", "tool"}),
}


#: The commonest role sequences, which pass ``check_role_order`` for every purpose (the check is skipped for them).
_VALID_EVERYWHERE = frozenset({("user", "assistant"), ("system", "user", "assistant")})


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


def build_row(draft: Draft, purpose: BatchPurpose, template: Template | None) -> RecordRow:
    """The catalog row of a draft's canonical record, or ``UnitError`` with the quarantine reason.

    The hot path of ingest: no pydantic model, each text JSON-encoded once for both the id and messages_json.
    """
    turns = apply_template(draft.turns, draft, template) if template is not None else draft.turns
    roles = tuple(role for role, _ in turns)
    if roles not in _VALID_EVERYWHERE:
        check_role_order(list(roles), purpose)
    contents = []
    for i, (role, content) in enumerate(turns, start=1):
        text = normalize_content(content)
        if not text:
            raise UnitError(f"empty {role} message at message {i}")
        if not is_encodable(text):
            raise UnitError(f"message {i} contains an unpaired surrogate (not valid Unicode)")
        contents.append(text)
    label = (normalize_content(draft.label) or None) if draft.label is not None else None
    metadata = draft.metadata
    record_id, messages_json = record_id_and_messages_json(roles, contents)
    return RecordRow(
        record_id=record_id,
        roles=roles,
        contents=tuple(contents),
        messages_json=messages_json,
        label=label,
        metadata=metadata,
        metadata_json=canonical_json(metadata) if metadata else "{}",
    )
