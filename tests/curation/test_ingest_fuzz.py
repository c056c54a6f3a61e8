"""Random bytes and random malformed rows never raise, and every row becomes at least one counted unit."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.ingest import IngestOptions
from curation.ingest.pipeline import Accepted, Refused, units_of
from curation.ingest.sources import SourcePlan
from curation.ingest.text_readers import ReadPosition
from schemas.catalog import Catalog
from schemas.records import Record
from tests.curation.ingest_support import run

KEYS = [
    "instruction", "input", "output", "system", "conversations", "from", "value", "messages", "role",
    "content", "type", "text", "replies", "instances", "turns", "tool_calls", "prompt", "message_tree_id",
]  # fmt: skip
ROLES = ["human", "gpt", "user", "assistant", "system", "tool", "prompter", "robot", ""]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(ROLES),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=20,
)
json_rows = json_values.map(lambda v: json.dumps(v).encode("utf-8"))
byte_rows = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" "))
lines = st.lists(st.one_of(json_rows, byte_rows), max_size=10)

SHAPES = ["alpaca", "sharegpt", "openai", "oasst", "selfinstruct", "turns", "mapped"]
MAPPING = {"text": "user", "output": "assistant", "role": "label", "value": "metadata"}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _units(path: Path, container: str, shape: str, eval_set: str | None) -> list[Accepted | Refused]:
    plan = SourcePlan(
        path=path,
        label=str(path),
        container=container,
        shape=shape,
        sha256="0",
        size=path.stat().st_size,
        mapping=MAPPING if shape == "mapped" else {},
    )
    options = IngestOptions(eval_set=eval_set, max_field_chars=20)
    return list(units_of(plan, options, None, ReadPosition()))


def _assert_units_are_sound(units: list[Accepted | Refused], eval_set: str | None) -> None:
    """Each unit once; a refusal names its reason and keeps the raw bytes; a record is a valid conversation
    whose texts respect ``max_field_chars`` (20) and, outside an eval set, ends with an answer."""
    keys = [(u.row, u.sub_index) for u in units]
    assert len(keys) == len(set(keys))
    for unit in units:
        if isinstance(unit, Refused):
            assert unit.reason.strip() and unit.raw
            continue
        messages = unit.record.messages
        assert messages and all(0 < len(m.content) <= 20 for m in messages)
        assert unit.record.record_id == Record.from_messages(messages).record_id
        if eval_set is None:
            assert messages[-1].role.value == "assistant"


def _nonblank_lines(data: bytes) -> set[int]:
    """Line numbers that are rows: not blank, once a leading byte-order mark is set aside."""
    found = set()
    for i, line in enumerate(data.split(b"\n"), start=1):
        if i == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if line.strip(b"\r\n").strip():
            found.add(i)
    return found


@FUZZ
@given(rows=lines, shape=st.sampled_from(SHAPES), eval_set=st.sampled_from([None, "e"]))
def test_jsonl_every_line_is_counted(rows: list[bytes], shape: str, eval_set: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.jsonl"
        data = b"\n".join(rows)
        path.write_bytes(data)
        units = _units(path, "jsonl", shape, eval_set)
    assert {u.row for u in units} == _nonblank_lines(data)
    _assert_units_are_sound(units, eval_set)


@FUZZ
@given(
    items=st.lists(json_values, max_size=8),
    cut=st.integers(0, 400),
    junk=st.binary(max_size=20),
    shape=st.sampled_from(SHAPES),
)
def test_json_array_never_raises(items: list[Any], cut: int, junk: bytes, shape: str) -> None:
    data = json.dumps(items).encode("utf-8")
    if cut and junk:
        data = data[: cut % (len(data) + 1)] + junk + data[cut % (len(data) + 1) :]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.json"
        path.write_bytes(data)
        units = _units(path, "json", shape, None)
    rows = sorted({u.row for u in units})
    assert rows == list(range(1, len(rows) + 1))  # element indexes without gaps
    if not (cut and junk):
        assert len(rows) == len(items)


@FUZZ
@given(rows=st.lists(st.one_of(byte_rows, st.lists(st.text(max_size=6), max_size=4)), max_size=10))
def test_csv_every_record_is_counted(rows: list[Any]) -> None:
    body = [r if isinstance(r, bytes) else ",".join(json.dumps(c) for c in r).encode() for r in rows]
    data = b"text,output\n" + b"\n".join(body)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.csv"
        path.write_bytes(data)
        units = _units(path, "csv", "mapped", None)
    assert all(u.row >= 2 for u in units)
    if b'"' not in data and b"\r" not in data:
        assert {u.row for u in units} == _nonblank_lines(data) - {1}
    else:  # quoted fields may span lines
        assert len(units) <= len(_nonblank_lines(data)) - 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=lines, fmt=st.sampled_from(["alpaca", "sharegpt", "openai", "oasst", "selfinstruct", "jsonl"]))
def test_full_pipeline_invariant(rows: list[bytes], fmt: str) -> None:
    # One catalog for all examples (a fresh one per example costs a migration); batches differ by content.
    workdir = Path(_shared_dir())
    path = workdir / f"f{len(list(workdir.glob('*.jsonl')))}.jsonl"
    path.write_bytes(b"\n".join(rows))
    mapping = {"text": "user", "output": "assistant"} if fmt == "jsonl" else {}
    catalog = Catalog(workdir / "catalog.duckdb")
    result = run(catalog, [path], format=fmt, mapping=mapping, max_field_chars=30)
    # the documented rule, and every non-blank line is a source row or a quarantined row of this batch
    assert result.rows_read == result.ingested + result.quarantined
    batch = [result.batch_id]
    stored = catalog.query(
        "SELECT row FROM source_rows WHERE batch_id = ? UNION ALL SELECT row FROM quarantined_rows WHERE batch_id = ?",
        [*batch, *batch],
    )
    assert len(stored) == result.rows_read
    assert {r["row"] for r in stored} == _nonblank_lines(path.read_bytes())


_SHARED: list[str] = []


def _shared_dir() -> str:
    if not _SHARED:
        _SHARED.append(tempfile.mkdtemp(prefix="ingest-fuzz-"))
    return _SHARED[0]
