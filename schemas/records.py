"""Canonical records, their source rows, quarantined rows and ingest batches."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.ids import record_id


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class BatchPurpose(StrEnum):
    TRAIN = "train"  # candidate training data
    EVAL = "eval"  # a registered eval set: never enters a snapshot's training data


def normalize_content(text: str) -> str:
    """Canonical form of message text: NFC, ``\\n`` line endings, no leading or trailing whitespace.

    Two messages that differ only in these respects are the same message (and so the same record id).
    """
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.strip()


def prompt_text(messages: Sequence[Mapping[str, str]]) -> str:
    """Non-system text before the final assistant message of ``messages`` ({role, content} dicts)."""
    return prompt_of([m["role"] for m in messages], [m["content"] for m in messages])


def prompt_of(roles: Sequence[str], contents: Sequence[str]) -> str:
    """``prompt_text`` of the conversation whose messages have these roles and contents."""
    end = len(roles) - 1 if roles and roles[-1] == Role.ASSISTANT.value else len(roles)
    return "\n\n".join(contents[i] for i in range(end) if roles[i] != Role.SYSTEM.value)


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role = Field(description="Who speaks: system, user, assistant or tool.")
    content: str = Field(description="Canonical text (see normalize_content).")

    @field_validator("content")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return normalize_content(value)


class Record(BaseModel):
    """A canonical conversation. Its id is derived from the messages alone."""

    model_config = ConfigDict(frozen=True)

    record_id: str = Field(description="rec_ + hash of the canonical messages.")
    messages: tuple[Message, ...] = Field(description="The normalised conversation, in order.")
    label: str | None = Field(default=None, description="Class label for classification-style data.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Metadata from the first source row.")

    @classmethod
    def from_messages(
        cls,
        messages: list[Message] | tuple[Message, ...],
        label: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Record:
        msgs = tuple(messages)
        rid = record_id([{"role": m.role.value, "content": m.content} for m in msgs])
        return cls(record_id=rid, messages=msgs, label=label, metadata=metadata or {})

    @property
    def prompt_text(self) -> str:
        """Everything before the final assistant message, as plain text (the 'question' side)."""
        return prompt_text(self.messages_as_dicts())

    @property
    def response_text(self) -> str:
        """The final assistant message ('' for a prompt-only record)."""
        if self.messages and self.messages[-1].role is Role.ASSISTANT:
            return self.messages[-1].content
        return ""

    def messages_as_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role.value, "content": m.content} for m in self.messages]


class SourceRow(BaseModel):
    """Where a record came from: one input unit of one ingest batch."""

    batch_id: str
    file: str = Field(description="Absolute path of the source file (or dataset folder).")
    row: int = Field(description="1-based line (line formats) or element/row index (arrays, tables).")
    sub_index: int = Field(default=0, description="Index of the unit within the row (OASST paths, instances).")
    record_id: str
    format: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class QuarantinedRow(BaseModel):
    """An input unit that did not become a record, kept with its raw bytes and the reason."""

    batch_id: str
    file: str
    row: int
    sub_index: int = 0
    reason: str
    raw: bytes


class IngestBatch(BaseModel):
    """One run of `refinery ingest` over a list of files with one configuration."""

    batch_id: str
    name: str
    purpose: BatchPurpose
    eval_set: str | None = None
    format: str
    files: list[str]
    config: dict[str, Any]
    rows_read: int = 0
    ingested: int = 0
    quarantined: int = 0
    new_records: int = 0
    status: str = "running"
    started_at: datetime | None = None
    finished_at: datetime | None = None
