"""Chat conversations in JSONL files that ship inside the packages: parsing and verified loading.

Training's rehearsal set and eval's general-capability references are both JSON lines of ``{"messages": [...]}``
ending with an assistant turn, packaged with a recorded SHA-256. Each caller passes its own error class, so a bad
file is reported in the caller's words (``RehearsalSetError``, ``GeneralSetError``) with the file and line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

Conversation = list[dict[str, str]]


def conversation_from_messages(messages: Any) -> Conversation | None:
    """``messages`` as a conversation of role/content strings ending with a non-empty assistant turn, else None."""
    if not isinstance(messages, list) or len(messages) < 2:
        return None
    turns: Conversation = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return None
        turns.append({"role": m["role"], "content": m["content"]})
    if turns[-1]["role"] != "assistant" or not turns[-1]["content"].strip():
        return None
    return turns


def jsonl_lines(data: bytes, name: str, error: type[Exception], what: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of each non-blank line; ``error`` for bytes that are not UTF-8 or a bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {name} is not UTF-8 (byte {exc.start})") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except json.JSONDecodeError as exc:
            raise error(f"{name}:{number}: not JSON ({exc.msg})") from None


def packaged_bytes(package: str, file: str, sha256: str, error: type[Exception], what: str) -> bytes:
    """``package/data/file``'s bytes, verified against its recorded SHA-256 (a damaged install is an error)."""
    data = resources.files(package).joinpath("data", file).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise error(
            f"the packaged {what} {package}/data/{file} is damaged (sha256 {digest[:12]}..., "
            f"expected {sha256[:12]}...); reinstall Refinery"
        )
    return data
