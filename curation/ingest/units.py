"""What flows between the ingest steps: raw rows from readers, drafted units from shapes, and rejections.

reader (container) --RawRow--> shape (format) --Draft | Rejected--> normalize --RecordRow | reason
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.ids import canonical_json
from schemas.records import Message, Record, Role, prompt_of

#: Raw bytes kept for a quarantined "rest of the file" unit are cut to this size.
MAX_REST_BYTES = 1 << 20


class UnitError(Exception):
    """One unit cannot become a record; the message is the quarantine reason."""


@dataclass(frozen=True, slots=True)
class RawRow:
    """One physical row of a container: parsed ``value``, or an ``error`` that quarantines it whole."""

    row: int  # 1-based: line number (JSONL, CSV) or element index (JSON arrays, Parquet, datasets)
    raw: bytes
    value: Any = None
    error: str | None = None


@dataclass(slots=True)
class Draft:
    """A unit extracted from a row by its shape, before validation: (role, content) turns, label, metadata."""

    sub_index: int
    turns: list[tuple[str, str]]
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Fields a template may name ({text} is the first user turn).
    fields: Mapping[str, Any] = field(default_factory=dict)
    #: Raw bytes to quarantine instead of the whole row (an OASST path, a self-instruct instance).
    raw: bytes | None = None


@dataclass(frozen=True, slots=True)
class RecordRow:
    """A canonical record as its ``records`` row: the id and every stored column, each computed once.

    Ingest builds these instead of ``schemas.records.Record`` models (the same values; :meth:`record` gives the
    model), so a row costs no validation and no second JSON encoding.
    """

    record_id: str
    roles: tuple[str, ...]
    contents: tuple[str, ...]
    messages_json: str
    label: str | None
    metadata: dict[str, Any]
    metadata_json: str

    @property
    def prompt(self) -> str:
        return prompt_of(self.roles, self.contents)

    @property
    def response(self) -> str:
        return self.contents[-1] if self.roles and self.roles[-1] == Role.ASSISTANT.value else ""

    def record(self) -> Record:
        pairs = zip(self.roles, self.contents, strict=True)
        messages = tuple(Message.model_construct(role=Role(role), content=content) for role, content in pairs)
        return Record.model_construct(
            record_id=self.record_id, messages=messages, label=self.label, metadata=self.metadata
        )

    @classmethod
    def of_record(cls, record: Record, metadata_json: str | None = None) -> RecordRow:
        """The row of a ``Record`` (edited and redacted versions); its canonical metadata JSON when not given."""
        return cls(
            record_id=record.record_id,
            roles=tuple(m.role.value for m in record.messages),
            contents=tuple(m.content for m in record.messages),
            messages_json=canonical_json(record.messages_as_dicts()),
            label=record.label,
            metadata=record.metadata,
            metadata_json=canonical_json(record.metadata) if metadata_json is None else metadata_json,
        )


@dataclass(frozen=True, slots=True)
class Rejected:
    sub_index: int
    reason: str
    raw: bytes | None = None


def one_line(text: str, limit: int = 300) -> str:
    """A reason fit for one line: whitespace collapsed, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | decimal.Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def take_text(obj: Mapping[str, Any], key: str, path: str, limit: int, required: bool = True) -> str:
    """The string at ``obj[key]`` (named ``path`` in reasons), checked for type, size and encodability."""
    if key not in obj:
        if required:
            raise UnitError(f"missing field '{path}'")
        return ""
    return check_text(obj[key], path, limit, required)


def check_text(value: Any, path: str, limit: int, required: bool = True) -> str:
    if value is None:
        if required:
            raise UnitError(f"field '{path}' is null")
        return ""
    if not isinstance(value, str):
        raise UnitError(f"field '{path}' is not a string (got {type_name(value)})")
    if len(value) > limit:
        raise UnitError(f"field '{path}' has {len(value)} characters (limit {limit})")
    if not is_encodable(value):
        raise UnitError(f"field '{path}' contains an unpaired surrogate (not valid Unicode)")
    return value


def is_encodable(text: str) -> bool:
    if text.isascii():  # constant time: most texts, and always encodable
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_jsonable(value: Any) -> Any:
    """Metadata made storable as strict JSON: NaN -> null, bytes -> base64, dates -> ISO text, rest -> str."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return value if is_encodable(value) else value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return to_jsonable(float(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    return str(value)


def raw_json(value: Any) -> bytes:
    """Bytes to quarantine for a value that has no raw bytes of its own (array elements, table rows)."""
    return json.dumps(to_jsonable(value), ensure_ascii=False, sort_keys=True).encode("utf-8")
