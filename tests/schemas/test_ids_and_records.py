from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.ids import artifact_id, canonical_json, kind_of, record_id
from schemas.records import Message, Record, Role, normalize_content


def test_record_id_ignores_insignificant_whitespace_and_line_endings() -> None:
    a = Record.from_messages([Message(role=Role.USER, content="Hi\r\nthere  "), Message(role="assistant", content="x")])
    b = Record.from_messages([Message(role=Role.USER, content="  Hi\nthere"), Message(role="assistant", content="x")])
    assert a.record_id == b.record_id
    assert a.record_id.startswith("rec_") and len(a.record_id) == 4 + 32


def test_record_id_depends_on_roles_and_order_not_metadata() -> None:
    user_first = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    swapped = [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
    assert record_id(user_first) != record_id(swapped)
    r1 = Record.from_messages([Message(role="user", content="a")], metadata={"k": 1})
    r2 = Record.from_messages([Message(role="user", content="a")], metadata={"k": 2}, label="x")
    assert r1.record_id == r2.record_id


def test_nfc_normalisation_makes_composed_and_decomposed_equal() -> None:
    assert normalize_content("cafe\u0301") == normalize_content("caf\u00e9")


def test_prompt_and_response_text() -> None:
    rec = Record.from_messages(
        [
            Message(role="system", content="be brief"),
            Message(role="user", content="q1"),
            Message(role="assistant", content="a1"),
            Message(role="user", content="q2"),
            Message(role="assistant", content="a2"),
        ]
    )
    assert rec.prompt_text == "q1\n\na1\n\nq2"
    assert rec.response_text == "a2"
    prompt_only = Record.from_messages([Message(role="user", content="q")])
    assert prompt_only.response_text == "" and prompt_only.prompt_text == "q"


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(ValidationError, match="Input should be 'system', 'user', 'assistant' or 'tool'"):
        Message(role="narrator", content="x")


def test_artifact_ids_are_deterministic_and_input_sensitive() -> None:
    a = artifact_id("snapshot", {"x": 1, "y": [1, 2]})
    assert a == artifact_id("snapshot", {"y": [1, 2], "x": 1})
    assert a != artifact_id("snapshot", {"x": 2, "y": [1, 2]})
    assert a.startswith("snap_") and kind_of(a) == "snapshot"
    assert kind_of("rec_abc") == "record" and kind_of("nope") is None
    with pytest.raises(ValueError, match="unknown artifact kind"):
        artifact_id("widget", {})


def test_canonical_json_is_order_independent_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        canonical_json({"x": float("nan")})
