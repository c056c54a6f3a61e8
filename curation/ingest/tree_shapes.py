"""Shapes with several units per row: OpenAssistant message trees and self-instruct tasks.

An OASST row is a tree of messages (``text``, ``role`` prompter/assistant, nested ``replies``); each
root-to-leaf path is one unit, in depth-first order (``sub_index``). A self-instruct task is an
``instruction`` with ``instances`` of ``{input, output}``; each instance is one unit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from curation.ingest.shapes import ShapeContext, as_object, join_instruction, rest_of
from curation.ingest.units import Draft, Rejected, UnitError, raw_json, take_text, to_jsonable, type_name

OASST_ROLES = {"prompter": "user", "user": "user", "assistant": "assistant"}
#: Per-message fields kept in metadata["path"]; the leaf's are also top-level metadata keys.
OASST_MESSAGE_FIELDS = ("message_id", "role", "rank", "review_count", "synthetic", "lang", "deleted")
_LEAF_FIELDS = ("message_id", "rank", "review_count", "synthetic", "lang")


def oasst(value: Any, ctx: ShapeContext) -> list[Draft | Rejected]:
    """Every root-to-leaf path of a message tree (a bare tree, or an export row with ``prompt``).

    Paths whose leaf is a prompter message end with the user: they are prompt-only units, which only eval
    sets accept (training data quarantines them with the reason).
    """
    try:
        row = as_object(value)
    except UnitError as exc:
        return [Rejected(0, str(exc))]
    root: Any = row
    if "text" not in row and isinstance(row.get("prompt"), dict):
        root = row["prompt"]
    tree_id = row.get("message_tree_id") or (root.get("message_tree_id") if isinstance(root, dict) else None)
    if tree_id is None and isinstance(root, dict):
        tree_id = root.get("message_id")
    units: list[Draft | Rejected] = []
    for sub_index, (path, problem) in enumerate(_paths(root)):
        raw = raw_json([_without_replies(node) for node in path])
        try:
            if problem is not None:
                raise UnitError(problem)
            units.append(_path_draft(sub_index, path, tree_id, ctx, raw))
        except UnitError as exc:
            units.append(Rejected(sub_index, str(exc), raw))
    return units


def _paths(root: Any) -> Iterator[tuple[list[Any], str | None]]:
    """(nodes from root to leaf, problem or None), depth first, without recursion (trees can be deep)."""
    stack: list[list[Any]] = [[root]]
    while stack:
        path = stack.pop()
        node = path[-1]
        if not isinstance(node, dict):
            yield path, f"message {len(path)} of the path is not an object (got {type_name(node)})"
            continue
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            yield path, f"field 'replies' of message {len(path)} is not a list (got {type_name(replies)})"
            continue
        if not replies:
            yield path, None
            continue
        stack.extend([*path, child] for child in reversed(replies))


def _without_replies(node: Any) -> Any:
    return {k: v for k, v in node.items() if k != "replies"} if isinstance(node, dict) else node


def _path_draft(sub_index: int, path: list[Any], tree_id: Any, ctx: ShapeContext, raw: bytes) -> Draft:
    turns = []
    for i, node in enumerate(path):
        if "role" not in node:
            raise UnitError(f"missing field 'path[{i}].role'")
        role = OASST_ROLES.get(str(node["role"]).strip().lower())
        if role is None:
            raise UnitError(f"unknown role {str(node['role'])[:40]!r} at message {i + 1}")
        turns.append((role, take_text(node, "text", f"path[{i}].text", ctx.limit)))
    leaf = path[-1]
    metadata: dict[str, Any] = {"tree_id": to_jsonable(tree_id)}
    metadata.update({k: to_jsonable(leaf.get(k)) for k in _LEAF_FIELDS})
    metadata["path"] = [{k: to_jsonable(node.get(k)) for k in OASST_MESSAGE_FIELDS} for node in path]
    return Draft(sub_index, turns, metadata=metadata, fields=_without_replies(path[0]), raw=raw)


def selfinstruct(value: Any, ctx: ShapeContext) -> list[Draft | Rejected]:
    """One unit per instance: user = instruction (+ blank line + input), assistant = output."""
    try:
        row = as_object(value)
        instruction = take_text(row, "instruction", "instruction", ctx.limit)
        if "instances" not in row:
            raise UnitError("missing field 'instances'")
        instances = row["instances"]
        if not isinstance(instances, list):
            raise UnitError(f"field 'instances' is not a list (got {type_name(instances)})")
        if not instances:
            raise UnitError("field 'instances' is an empty list")
    except UnitError as exc:
        return [Rejected(0, str(exc))]
    shared = rest_of(row, "instruction", "instances")
    units: list[Draft | Rejected] = []
    for i, instance in enumerate(instances):
        raw = raw_json({"instruction": instruction, "instance": instance})
        try:
            if not isinstance(instance, dict):
                raise UnitError(f"field 'instances[{i}]' is not an object (got {type_name(instance)})")
            extra = take_text(instance, "input", f"instances[{i}].input", ctx.limit, required=False)
            output = take_text(instance, "output", f"instances[{i}].output", ctx.limit)
        except UnitError as exc:
            units.append(Rejected(i, str(exc), raw))
            continue
        turns = [("user", join_instruction(instruction, extra)), ("assistant", output)]
        fields = {**row, "input": extra, "output": output}
        units.append(Draft(i, turns, metadata={**shared, "instance": i}, fields=fields, raw=raw))
    return units
