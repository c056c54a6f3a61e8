"""Streaming readers for text containers: JSON Lines, JSON arrays, CSV and TSV.

Every reader yields one ``RawRow`` per physical row and never loads a whole file. Bytes are decoded strictly
per row, so invalid UTF-8 or malformed JSON quarantines that row (with its raw bytes) and reading goes on.
Blank lines are not rows. A JSON array that breaks mid-file cannot be resynchronised, so its rest becomes one
quarantined unit.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ijson

from curation.ingest.units import MAX_REST_BYTES, RawRow, one_line, raw_json

_BOM = b"\xef\xbb\xbf"
#: A CSV record whose quoted field never closes would swallow the file; past this size it is cut off.
MAX_CSV_RECORD_BYTES = 16 << 20
_FALLBACK_BUFFER = 4096
# The csv module refuses fields over 128 KiB by default; fields are limited by max_field_chars instead.
csv.field_size_limit(max(csv.field_size_limit(), MAX_CSV_RECORD_BYTES))


@dataclass
class ReadPosition:
    """Bytes of the current file consumed so far (drives the progress bar)."""

    offset: int = 0


def decode_row(raw: bytes) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) for one row's bytes, decoded strictly as UTF-8."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}"


def parse_json_text(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"malformed JSON: {exc}"
    except RecursionError:
        return None, "malformed JSON: nested too deeply"


def read_jsonl(path: Path, position: ReadPosition) -> Iterator[RawRow]:
    """One row per non-blank line; ``row`` is the 1-based physical line number."""
    with path.open("rb") as handle:
        for lineno, line in enumerate(handle, start=1):
            position.offset += len(line)
            raw = line.rstrip(b"\r\n")
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if not raw or raw.isspace():  # what `not raw.strip()` says, without copying the row
                continue
            text, error = decode_row(raw)
            if text is None:
                yield RawRow(lineno, raw, error=error)
                continue
            value, error = parse_json_text(text)
            yield RawRow(lineno, raw, value=value, error=error)


def first_significant_byte(path: Path) -> bytes:
    """The first non-whitespace byte of a file (after a BOM), or b"" for an empty file."""
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
        while head:
            stripped = head.removeprefix(_BOM).lstrip()
            if stripped:
                return stripped[:1]
            head = handle.read(1 << 16)
    return b""


class _TrackingReader:
    """A binary file wrapper that remembers where the last read began (to locate a parse failure)."""

    def __init__(self, handle: IO[bytes], position: ReadPosition) -> None:
        self._handle = handle
        self._position = position
        self.last_read_start = 0
        self.offset = 0

    def read(self, size: int = -1) -> bytes:
        self.last_read_start = self.offset
        data = self._handle.read(size)
        self.offset += len(data)
        self._position.offset = max(self._position.offset, self.offset)
        return data


def read_json_array(path: Path, position: ReadPosition) -> Iterator[RawRow]:
    """One row per element of a top-level JSON array; ``row`` is the 1-based element index.

    The fast C parser works a buffer at a time, so after a failure the elements before the error in that
    buffer are recovered with ijson's pure-Python parser (small buffers); the rest of the file, from at most
    one small buffer before the error, is one quarantined unit.
    """
    yielded = 0
    with path.open("rb") as handle:
        reader = _TrackingReader(handle, position)
        try:
            for item in ijson.items(reader, "item", use_float=True):
                yielded += 1
                yield RawRow(yielded, _element_bytes(item), value=item)
            return
        except Exception:  # any parser failure: recover precisely below
            pass
    yield from _recover_json_array(path, position, skip=yielded, failed_buffer=reader.last_read_start)


def _recover_json_array(path: Path, position: ReadPosition, skip: int, failed_buffer: int) -> Iterator[RawRow]:
    from ijson.backends import python as slow_ijson

    index = 0
    with path.open("rb") as handle:
        reader = _TrackingReader(handle, position)
        try:
            for item in slow_ijson.items(reader, "item", use_float=True, buf_size=_FALLBACK_BUFFER):
                index += 1
                if index > skip:
                    yield RawRow(index, _element_bytes(item), value=item)
            return  # the slow parser accepted what the fast one refused: nothing is left over
        except Exception as exc:
            # The slow parser may fail earlier than the fast one did (it decodes whole buffers): then the
            # rest starts after the elements already yielded, within the buffer where the fast parser failed.
            rest_start = reader.last_read_start if index >= skip else max(reader.last_read_start, failed_buffer)
            index = max(index, skip)
            reason = f"malformed JSON: {one_line(str(exc), 200)} (rest of the file from element {index + 1})"
        handle.seek(rest_start)
        rest = handle.read(MAX_REST_BYTES)
    position.offset = path.stat().st_size
    yield RawRow(index + 1, rest, error=reason)


def _element_bytes(item: Any) -> bytes:
    return raw_json(item)


def read_csv_header(path: Path, delimiter: str) -> list[str] | None:
    """The header row's column names, or None when it cannot be read (the file is then quarantined)."""
    for _, raw in _csv_records(path, delimiter, ReadPosition()):
        text, _ = decode_row(raw)
        if text is None:
            return None
        fields, _ = _parse_csv_record(text, delimiter)
        return None if fields is None else [f.strip() for f in fields]
    return None


def read_csv(path: Path, delimiter: str, position: ReadPosition) -> Iterator[RawRow]:
    """Rows of a CSV (quoted fields may span lines) or TSV (no quoting) file as column -> value dicts.

    ``row`` is the 1-based line number where the record starts (the header is line 1).
    """
    records = _csv_records(path, delimiter, position)
    header: list[str] | None = None
    for start, raw in records:
        text, error = decode_row(raw)
        fields = None
        if text is not None:
            fields, error = _parse_csv_record(text, delimiter)
        if header is None:
            if fields is None:
                yield _unreadable_header(path, error or "unreadable")
                position.offset = path.stat().st_size
                return
            header = [f.strip() for f in fields]
            continue
        if fields is None:
            yield RawRow(start, raw, error=error)
        elif len(fields) != len(header):
            yield RawRow(start, raw, error=f"wrong number of fields: {len(fields)} (header has {len(header)})")
        else:
            yield RawRow(start, raw, value=dict(zip(header, fields, strict=True)))


def _unreadable_header(path: Path, reason: str) -> RawRow:
    with path.open("rb") as handle:
        head = handle.read(MAX_REST_BYTES)
    return RawRow(1, head, error=f"CSV header: {reason} (the whole file is unreadable)")


def _csv_records(path: Path, delimiter: str, position: ReadPosition) -> Iterator[tuple[int, bytes]]:
    """(first line number, raw bytes without the final line break) of each non-blank CSV record.

    A CSV record ends at a line break outside quotes; counting quote bytes finds it without decoding (the
    quote byte never occurs inside a multi-byte UTF-8 sequence), so a bad byte spoils only its own record.
    """
    quoted = delimiter != "\t"
    with path.open("rb") as handle:
        pending: list[bytes] = []
        start = 0
        quotes = 0
        size = 0
        for lineno, line in enumerate(handle, start=1):
            position.offset += len(line)
            if lineno == 1 and line.startswith(_BOM):
                line = line[len(_BOM) :]
            if not pending:
                start = lineno
            pending.append(line)
            size += len(line)
            if quoted:
                quotes += line.count(b'"')
            if quotes % 2 == 0 or size > MAX_CSV_RECORD_BYTES:
                raw = b"".join(pending).rstrip(b"\r\n")
                pending, quotes, size = [], 0, 0
                if raw.strip():
                    yield start, raw
        if pending:
            yield start, b"".join(pending).rstrip(b"\r\n")


def _parse_csv_record(text: str, delimiter: str) -> tuple[list[str] | None, str | None]:
    stream = io.StringIO(text, newline="")
    try:
        if delimiter == "\t":
            rows = list(csv.reader(stream, delimiter=delimiter, quoting=csv.QUOTE_NONE, strict=True))
        else:
            rows = list(csv.reader(stream, delimiter=delimiter, strict=True))
    except csv.Error as exc:
        return None, f"malformed CSV: {one_line(str(exc), 200)}"
    if len(rows) != 1:
        return None, f"malformed CSV: one line holds {len(rows)} records (a bare carriage return?)"
    return rows[0], None
