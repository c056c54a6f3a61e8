"""Identity: canonical JSON, content hashes, record ids and artifact ids.

A record id is a hash of the record's canonical messages, so the same conversation ingested twice is one
record. An artifact id is a hash of its kind and its inputs (parents plus full config), so re-running a step
with the same inputs yields the same id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring as _json_string  # canonical_json's own encoder of a str
from pathlib import Path
from typing import Any

RECORD_PREFIX = "rec_"
#: Prefixes of every artifact kind; `refinery lineage ID` uses them to tell what an id names.
ARTIFACT_PREFIXES: dict[str, str] = {
    "batch": "batch_",
    "scan": "scan_",
    "snapshot": "snap_",
    "adapter": "adp_",
    "eval": "eval_",
    "base_model": "base_",
}
_RECORD_HEX = 32  # 128 bits: collision-free in practice at billions of records
_ARTIFACT_HEX = 16


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no insignificant whitespace and real Unicode: one text per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(root: Path, exclude: Iterable[str] = ()) -> dict[str, str]:
    """Hash of every file under ``root`` keyed by its POSIX path relative to ``root``."""
    skip = set(exclude)
    hashes: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel not in skip:
            hashes[rel] = sha256_file(path)
    return hashes


def record_id(messages: Sequence[Mapping[str, str]]) -> str:
    """Id of a conversation: hash of its canonical (role, content) list. Metadata never enters the id."""
    body = canonical_json([[m["role"], m["content"]] for m in messages])
    return RECORD_PREFIX + sha256_text(body)[:_RECORD_HEX]


def record_id_and_messages_json(roles: Sequence[str], contents: Sequence[str]) -> tuple[str, str]:
    """``record_id`` of a conversation and ``canonical_json`` of its ``{role, content}`` dicts, each text JSON-encoded
    once (the hot path of ingest). Equal to ``record_id(messages)`` and ``canonical_json(messages)``."""
    roles_json = [_json_string(role) for role in roles]
    contents_json = [_json_string(content) for content in contents]
    pairs = list(zip(roles_json, contents_json, strict=True))
    body = "[" + ",".join([f"[{role},{content}]" for role, content in pairs]) + "]"
    messages_json = "[" + ",".join([f'{{"content":{content},"role":{role}}}' for role, content in pairs]) + "]"
    return RECORD_PREFIX + sha256_text(body)[:_RECORD_HEX], messages_json


def artifact_id(kind: str, inputs: Any) -> str:
    """Deterministic id of an artifact of ``kind`` derived from ``inputs`` (parents, config, content)."""
    if kind not in ARTIFACT_PREFIXES:
        raise ValueError(f"unknown artifact kind {kind!r}; known: {', '.join(sorted(ARTIFACT_PREFIXES))}")
    body = canonical_json({"kind": kind, "inputs": inputs})
    return ARTIFACT_PREFIXES[kind] + sha256_text(body)[:_ARTIFACT_HEX]


def kind_of(identifier: str) -> str | None:
    """The kind an id names ("record", "snapshot", ...), or None when it matches no known prefix."""
    if identifier.startswith(RECORD_PREFIX):
        return "record"
    for kind, prefix in ARTIFACT_PREFIXES.items():
        if identifier.startswith(prefix):
            return kind
    return None
