"""Row shapes: how one parsed row becomes one or more drafted units (role, content turns + label + metadata).

A shape checks what it takes from a row (missing fields, wrong types, oversize text, unknown roles) and
raises ``UnitError`` with the reason; role order and emptiness are checked later, for every shape alike.
Fields a shape does not consume are kept as the unit's metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from curation.ingest.units import Draft, Rejected, UnitError, check_text, take_text, to_jsonable, type_name

#: Source role names -> canonical roles, per format.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}
OPENAI_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}
#: An assistant value this short and on one line is a class label too (classification tables).
LABEL_MAX_CHARS = 100


@dataclass(frozen=True)
class ShapeContext:
    limit: int  # max_field_chars
    mapping: Mapping[str, str] = field(default_factory=dict)


ShapeFn = Callable[[Any, ShapeContext], list[Draft | Rejected]]


def as_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnitError(f"row is not a JSON object (got {type_name(value)})")
    return value


def rest_of(row: Mapping[str, Any], *consumed: str) -> dict[str, Any]:
    return {k: to_jsonable(v) for k, v in row.items() if k not in consumed}


def single(fn: Callable[[Any, ShapeContext], Draft]) -> ShapeFn:
    """Lift a one-unit-per-row shape to the common signature, turning its UnitError into a rejection."""

    def shape(value: Any, ctx: ShapeContext) -> list[Draft | Rejected]:
        try:
            return [fn(value, ctx)]
        except UnitError as exc:
            return [Rejected(0, str(exc))]

    shape.__name__ = fn.__name__
    shape.__doc__ = fn.__doc__
    return shape


def join_instruction(instruction: str, extra: str) -> str:
    """Alpaca and self-instruct: the input, when present, follows the instruction after a blank line."""
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


@single
def alpaca(value: Any, ctx: ShapeContext) -> Draft:
    """``instruction``, optional ``input``, ``output``, optional ``system``."""
    row = as_object(value)
    instruction = take_text(row, "instruction", "instruction", ctx.limit)
    extra = take_text(row, "input", "input", ctx.limit, required=False)
    output = take_text(row, "output", "output", ctx.limit)
    system = take_text(row, "system", "system", ctx.limit, required=False)
    turns = [("system", system)] if system.strip() else []
    turns += [("user", join_instruction(instruction, extra)), ("assistant", output)]
    return Draft(0, turns, metadata=rest_of(row, "instruction", "input", "output", "system"), fields=row)


@single
def sharegpt(value: Any, ctx: ShapeContext) -> Draft:
    """``conversations``: a list of ``{from, value}``; an optional top-level ``system`` comes first."""
    row = as_object(value)
    conversation = _list_field(row, "conversations")
    system = take_text(row, "system", "system", ctx.limit, required=False)
    turns = [("system", system)] if system.strip() else []
    for i, message in enumerate(conversation):
        path = f"conversations[{i}]"
        if not isinstance(message, dict):
            raise UnitError(f"field '{path}' is not an object (got {type_name(message)})")
        source_role = message.get("from")
        if source_role is None:
            raise UnitError(f"missing field '{path}.from'")
        role = SHAREGPT_ROLES.get(str(source_role).strip().lower())
        if role is None:
            raise UnitError(f"unknown role {str(source_role)[:40]!r} at message {i + 1}")
        turns.append((role, take_text(message, "value", f"{path}.value", ctx.limit)))
    return Draft(0, turns, metadata=rest_of(row, "conversations", "system"), fields=row)


@single
def openai(value: Any, ctx: ShapeContext) -> Draft:
    """``messages``: a list of ``{role, content}``; content may be a list of ``{type: text, text}`` parts."""
    row = as_object(value)
    turns = []
    for i, message in enumerate(_list_field(row, "messages")):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise UnitError(f"field '{path}' is not an object (got {type_name(message)})")
        if "role" not in message:
            raise UnitError(f"missing field '{path}.role'")
        role = OPENAI_ROLES.get(str(message["role"]).strip().lower())
        if role is None:
            raise UnitError(f"unknown role {str(message['role'])[:40]!r} at message {i + 1}")
        turns.append((role, _openai_content(message, path, i, ctx.limit)))
    return Draft(0, turns, metadata=rest_of(row, "messages"), fields=row)


def _openai_content(message: dict[str, Any], path: str, index: int, limit: int) -> str:
    if "content" not in message:
        raise UnitError(f"missing field '{path}.content'")
    content = message["content"]
    if content is None and message.get("tool_calls"):
        raise UnitError(f"tool_calls at message {index + 1} are not supported (no text content)")
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type_name(part)
                raise UnitError(f"unsupported content part {str(kind)[:40]!r} at message {index + 1}")
        content = "\n".join(texts)
    if content is not None and not isinstance(content, str):
        raise UnitError(f"non-string content at message {index + 1} (got {type_name(content)})")
    return check_text(content, f"{path}.content", limit)


@single
def turns(value: Any, ctx: ShapeContext) -> Draft:
    """Prompt-only collections (MT-Bench): ``turns`` is a list of user strings.

    Only the first turn becomes the (single) user message: later turns were written as follow-ups to a
    model's answer, which the collection does not have. The full list stays in ``metadata["turns"]``.
    """
    row = as_object(value)
    first = _first_turn(row, "turns", ctx.limit)
    metadata = rest_of(row)
    return Draft(0, [("user", first)], metadata=metadata, fields=row)


def _first_turn(row: Mapping[str, Any], key: str, limit: int) -> str:
    items = _list_field(row, key)
    if not items:
        raise UnitError(f"field '{key}' is an empty list")
    for i, item in enumerate(items):
        check_text(item, f"{key}[{i}]", limit)
    return str(items[0])


def _list_field(row: Mapping[str, Any], key: str) -> list[Any]:
    if key not in row:
        raise UnitError(f"missing field '{key}'")
    value = row[key]
    if not isinstance(value, list):
        raise UnitError(f"field '{key}' is not a list (got {type_name(value)})")
    return value


@single
def mapped(value: Any, ctx: ShapeContext) -> Draft:
    """Tables and free-form JSON rows read through ``--map`` (column -> role).

    A bare JSON string row is the column ``text``. A user column holding a list of strings (MT-Bench
    ``turns``) contributes its first item. A single-line assistant value of at most 100 characters is also
    the label; an explicit label column sets the label, and the response when there is no assistant column.
    """
    row = {"text": value} if isinstance(value, str) else as_object(value)
    roles = ctx.mapping
    for column in roles:
        if roles[column] in ("user", "assistant", "system", "label") and column not in row:
            raise UnitError(f"missing field '{column}'")
    user_parts = []
    for column in (c for c, r in roles.items() if r == "user"):
        cell = row[column]
        user_parts.append(_first_turn(row, column, ctx.limit) if isinstance(cell, list) else _cell(row, column, ctx))
    system = [_cell(row, c, ctx) for c, r in roles.items() if r == "system"]
    assistant = [_cell(row, c, ctx) for c, r in roles.items() if r == "assistant"]
    labels = [_label_cell(row, c, ctx) for c, r in roles.items() if r == "label"]
    turns = [("system", s) for s in system if s.strip()]
    turns.append(("user", "\n\n".join(user_parts)))
    label: str | None = None
    if assistant:
        turns.append(("assistant", assistant[0]))
        answer = assistant[0].strip()
        if answer and "\n" not in answer and len(answer) <= LABEL_MAX_CHARS:
            label = answer
    if labels:
        label = labels[0].strip() or None
        if not assistant:
            turns.append(("assistant", labels[0]))
    metadata = {k: to_jsonable(v) for k, v in row.items() if roles.get(k, "metadata") == "metadata"}
    # A list-valued user column keeps all its items (MT-Bench turns) beside the first one it contributed.
    metadata.update({c: to_jsonable(row[c]) for c, r in roles.items() if r == "user" and isinstance(row[c], list)})
    return Draft(0, turns, label=label, metadata=metadata, fields=row)


def _cell(row: Mapping[str, Any], column: str, ctx: ShapeContext) -> str:
    return check_text(row[column], column, ctx.limit)


def _label_cell(row: Mapping[str, Any], column: str, ctx: ShapeContext) -> str:
    value = row[column]
    # Class ids are often integers (Parquet, datasets ClassLabel); they are labels all the same.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return check_text(value, column, ctx.limit)


def undetected(value: Any, ctx: ShapeContext) -> list[Draft | Rejected]:
    """Rows of a file whose shape could not be detected (its first rows were all malformed)."""
    keys = sorted(value)[:10] if isinstance(value, dict) else []
    return [Rejected(0, f"unrecognised row shape (keys: {', '.join(map(str, keys)) or 'none'})")]
