"""Planted-defect files, one family at a time: exact reasons, counts, positions and the rows_read invariant."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.catalog import Catalog
from tests.curation.ingest_support import quarantine, records_of, run, write_json, write_lines


def alpaca(instruction: str, output: object, extra: str = "") -> dict[str, object]:
    return {"instruction": instruction, "input": extra, "output": output}


def test_alpaca_jsonl_planted_defects(catalog: Catalog, tmp_path: Path) -> None:
    bad_utf8 = b'{"instruction": "caf\xe9", "output": "x"}'
    path = write_lines(
        tmp_path / "alpaca.jsonl",
        [
            alpaca("Say hi", "Hi"),  # 1
            alpaca("Translate", "Hello", extra="Bonjour"),  # 2
            b"   ",  # 3: blank, not a row
            bad_utf8,  # 4
            b'{"instruction": "a", "output": }',  # 5
            {"instruction": "a", "input": ""},  # 6
            alpaca("a", "   "),  # 7
            alpaca("a", 5),  # 8
            alpaca("a", "x" * 51),  # 9
            ["not", "an", "object"],  # 10
            alpaca("Say hi", "Hi"),  # 11: the same pair again
            {"instruction": "Be brief", "output": "Ok", "system": "You are terse.", "source": "web"},  # 12
        ],
    )
    result = run(catalog, [path], max_field_chars=50)
    assert (result.rows_read, result.ingested, result.quarantined, result.new_records) == (11, 4, 7, 3)
    assert quarantine(catalog, result.batch_id) == [
        (4, 0, "invalid UTF-8 at byte 20"),
        (5, 0, "malformed JSON: Expecting value: line 1 column 32 (char 31)"),
        (6, 0, "missing field 'output'"),
        (7, 0, "empty assistant message at message 2"),
        (8, 0, "field 'output' is not a string (got number)"),
        (9, 0, "field 'output' has 51 characters (limit 50)"),
        (10, 0, "row is not a JSON object (got list)"),
    ]
    raw = catalog.scalar("SELECT raw FROM quarantined_rows WHERE row = 4 AND batch_id = ?", [result.batch_id])
    assert bytes(raw) == bad_utf8
    records = records_of(catalog, result.batch_id)
    assert [r["row"] for r in records] == [1, 2, 11, 12]
    assert records[0]["record_id"] == records[2]["record_id"]  # one record, two source rows
    assert records[1]["messages"] == [
        {"role": "user", "content": "Translate\n\nBonjour"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert records[3]["messages"][0] == {"role": "system", "content": "You are terse."}
    assert records[3]["prompt"] == "Be brief" and records[3]["response"] == "Ok"
    assert records[3]["metadata"] == {"source": "web"}
    assert {f.format for f in result.files} == {"alpaca"}


def sharegpt(*turns: tuple[str, object], **extra: object) -> dict[str, object]:
    return {"conversations": [{"from": who, "value": text} for who, text in turns], **extra}


def test_sharegpt_json_array_planted_defects(catalog: Catalog, tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "chats.json",
        [
            sharegpt(("human", "Hi"), ("gpt", "Hello!"), id="a"),  # 1
            sharegpt(("system", "Be kind"), ("user", "Hi"), ("chatgpt", "Hello!")),  # 2
            sharegpt(("human", "Hi"), ("robot", "beep")),  # 3
            sharegpt(("human", "Hi"), ("gpt", "A"), ("gpt", "B")),  # 4
            sharegpt(("gpt", "Hi"), ("human", "Hello")),  # 5
            sharegpt(("human", "Hi")),  # 6
            {"id": "no conversations"},  # 7
            sharegpt(("human", "Hi"), ("gpt", 3)),  # 8
            sharegpt(("human", "Hi"), ("system", "late"), ("gpt", "x")),  # 9
            sharegpt(("human", "Weather?"), ("gpt", "Let me look."), ("tool", "sunny"), ("gpt", "Sunny.")),  # 10
            sharegpt(("human", "Hi"), ("tool", "x"), ("gpt", "y")),  # 11
            sharegpt(),  # 12
            sharegpt(("human", "Hi"), ("gpt", "A"), ("tool", "x")),  # 13
        ],
    )
    result = run(catalog, [path])
    assert (result.rows_read, result.ingested, result.quarantined) == (13, 3, 10)
    assert quarantine(catalog, result.batch_id) == [
        (3, 0, "unknown role 'robot' at message 2"),
        (4, 0, "role order: assistant follows assistant at message 3"),
        (5, 0, "role order: conversation starts with assistant at message 1"),
        (6, 0, "no assistant reply (prompt-only rows are accepted only in eval sets)"),
        (7, 0, "missing field 'conversations'"),
        (8, 0, "field 'conversations[1].value' is not a string (got number)"),
        (9, 0, "role order: system follows user at message 2"),
        (11, 0, "role order: tool follows user at message 2"),
        (12, 0, "empty conversation"),
        (13, 0, "role order: conversation ends with a tool message"),
    ]
    records = records_of(catalog, result.batch_id)
    assert [r["row"] for r in records] == [1, 2, 10]
    assert records[0]["metadata"] == {"id": "a"}
    assert [m["role"] for m in records[2]["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert records[2]["prompt"] == "Weather?\n\nLet me look.\n\nsunny" and records[2]["response"] == "Sunny."


def test_json_array_broken_mid_file_quarantines_the_rest(catalog: Catalog, tmp_path: Path) -> None:
    good = [sharegpt(("human", f"Q{i}"), ("gpt", f"A{i}")) for i in range(3)]
    text = (
        json.dumps(good)[:-1] + ', {"conversations": [{"from": "human", "value": "x"}, oops]}, ' + json.dumps(good[0])
    )
    path = tmp_path / "broken.json"
    path.write_text(text + "]", encoding="utf-8")
    result = run(catalog, [path], format="sharegpt")
    assert (result.rows_read, result.ingested, result.quarantined) == (4, 3, 1)
    [(row, sub_index, reason)] = quarantine(catalog, result.batch_id)
    assert (row, sub_index) == (4, 0)
    assert reason.startswith("malformed JSON: ") and reason.endswith("(rest of the file from element 4)")
    raw = bytes(catalog.scalar("SELECT raw FROM quarantined_rows WHERE batch_id = ?", [result.batch_id]))
    assert b"oops" in raw and len(raw) <= 1 << 20


def test_json_array_with_invalid_utf8_recovers_the_elements_before_it(catalog: Catalog, tmp_path: Path) -> None:
    good = [alpaca(f"Q{i}", f"A{i}") for i in range(50)]
    head = json.dumps(good)[:-1].encode()
    path = tmp_path / "bad_bytes.json"
    path.write_bytes(head + b', {"instruction": "caf\xe9", "output": "x"}]')
    result = run(catalog, [path])
    assert (result.rows_read, result.ingested, result.quarantined) == (51, 50, 1)
    assert quarantine(catalog, result.batch_id)[0][0] == 51


def openai(*messages: dict[str, object]) -> dict[str, object]:
    return {"messages": list(messages)}


def test_openai_jsonl_planted_defects(catalog: Catalog, tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]
    path = write_lines(
        tmp_path / "openai.jsonl",
        [
            openai({"role": "user", "content": parts}, {"role": "assistant", "content": "Hi"}),  # 1
            openai({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}),  # 2
            openai(
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            ),  # 3
            openai({"role": "user", "content": 7}, {"role": "assistant", "content": "x"}),  # 4
            openai({"role": "wizard", "content": "x"}),  # 5
            openai({"role": "user", "content": "x"}, {"role": "assistant"}),  # 6
            openai(
                {"role": "developer", "content": "Use tools."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "Calling calc."},
                {"role": "tool", "content": "4"},
                {"role": "assistant", "content": "4"},
            ),  # 7
        ],
    )
    result = run(catalog, [path])
    assert (result.rows_read, result.ingested, result.quarantined) == (7, 2, 5)
    assert quarantine(catalog, result.batch_id) == [
        (2, 0, "unsupported content part 'image_url' at message 1"),
        (3, 0, "tool_calls at message 2 are not supported (no text content)"),
        (4, 0, "non-string content at message 1 (got number)"),
        (5, 0, "unknown role 'wizard' at message 1"),
        (6, 0, "missing field 'messages[1].content'"),
    ]
    records = records_of(catalog, result.batch_id)
    assert records[0]["messages"][0] == {"role": "user", "content": "Hello\nworld"}
    assert [m["role"] for m in records[1]["messages"]] == ["system", "user", "assistant", "tool", "assistant"]


def node(role: str, text: str, replies: list[dict[str, object]] | None = None, **extra: object) -> dict[str, object]:
    mid = extra.pop("message_id", f"{role}-{text}")
    return {"message_id": mid, "role": role, "text": text, "replies": replies or [], "lang": "en", **extra}


def oasst_file(tmp_path: Path) -> Path:
    tree = node(
        "prompter",
        "What is 2+2?",
        [
            node("assistant", "4", [node("prompter", "And 3+3?", [node("assistant", "6", rank=0)])], rank=0),
            node("assistant", "Four", rank=1, review_count=3, synthetic=False),
            node("assistant", "  ", rank=2),
        ],
        message_id="root",
    )
    lonely = node("prompter", "Anyone there?", message_id="lonely")
    odd = node("prompter", "Hi", [node("moderator", "removed")])
    return write_lines(tmp_path / "trees.jsonl", [tree, lonely, odd])


def test_oasst_trees_flatten_to_paths(catalog: Catalog, tmp_path: Path) -> None:
    result = run(catalog, [oasst_file(tmp_path)])
    assert (result.rows_read, result.ingested, result.quarantined) == (5, 2, 3)
    assert quarantine(catalog, result.batch_id) == [
        (1, 2, "empty assistant message at message 2"),
        (2, 0, "no assistant reply (prompt-only rows are accepted only in eval sets)"),
        (3, 0, "unknown role 'moderator' at message 2"),
    ]
    deep, short = records_of(catalog, result.batch_id)
    assert (deep["row"], deep["sub_index"], short["sub_index"]) == (1, 0, 1)
    assert [m["content"] for m in deep["messages"]] == ["What is 2+2?", "4", "And 3+3?", "6"]
    assert short["metadata"]["message_id"] == "assistant-Four"
    assert (short["metadata"]["rank"], short["metadata"]["review_count"], short["metadata"]["synthetic"]) == (
        1,
        3,
        False,
    )
    assert short["metadata"]["tree_id"] == "root" and len(short["metadata"]["path"]) == 2
    assert {f.format for f in result.files} == {"oasst"}


def test_oasst_prompt_only_paths_are_accepted_in_eval_sets(catalog: Catalog, tmp_path: Path) -> None:
    result = run(catalog, [oasst_file(tmp_path)], eval_set="oasst-eval")
    assert (result.rows_read, result.ingested, result.quarantined) == (5, 3, 2)
    lonely = [r for r in records_of(catalog, result.batch_id) if r["row"] == 2]
    assert lonely[0]["response"] == "" and lonely[0]["prompt"] == "Anyone there?"


def test_selfinstruct_instances_are_units(catalog: Catalog, tmp_path: Path) -> None:
    task = {
        "id": "t1",
        "instruction": "Add the numbers.",
        "instances": [{"input": "1 2", "output": "3"}, {"input": "", "output": "0"}, {"input": "2 2"}],
        "is_classification": False,
    }
    path = write_lines(
        tmp_path / "tasks.jsonl",
        [task, {"instruction": "x", "instances": []}, {"instances": [{"input": "", "output": "y"}]}],
    )
    result = run(catalog, [path])
    assert (result.rows_read, result.ingested, result.quarantined) == (5, 2, 3)
    assert quarantine(catalog, result.batch_id) == [
        (1, 2, "missing field 'instances[2].output'"),
        (2, 0, "field 'instances' is an empty list"),
        (3, 0, "missing field 'instruction'"),
    ]
    with_input, without = records_of(catalog, result.batch_id)
    assert with_input["prompt"] == "Add the numbers.\n\n1 2" and without["prompt"] == "Add the numbers."
    assert with_input["metadata"] == {"id": "t1", "is_classification": False, "instance": 0}
    raw = catalog.scalar("SELECT raw FROM quarantined_rows WHERE row = 1 AND batch_id = ?", [result.batch_id])
    assert json.loads(bytes(raw)) == {"instruction": "Add the numbers.", "instance": {"input": "2 2"}}


def test_prompt_only_turns_keep_the_first_turn(catalog: Catalog, tmp_path: Path) -> None:
    rows = [{"question_id": 1, "category": "math", "turns": ["What is 2+2?", "And doubled?"]}, {"turns": []}]
    path = write_lines(tmp_path / "question.jsonl", rows)
    result = run(catalog, [path], eval_set="bench")
    assert (result.ingested, result.quarantined) == (1, 1)
    assert quarantine(catalog, result.batch_id) == [(2, 0, "field 'turns' is an empty list")]
    [record] = records_of(catalog, result.batch_id)
    assert record["messages"] == [{"role": "user", "content": "What is 2+2?"}]
    assert record["metadata"] == {"question_id": 1, "category": "math", "turns": rows[0]["turns"]}
    again = run(catalog, [path], eval_set="bench2", format="jsonl", mapping={"turns": "user"})
    assert again.ingested == 1 and again.new_records == 0
    trained = run(catalog, [path])
    assert trained.ingested == 0 and trained.quarantined == 2


def test_bare_string_rows_are_prompts(catalog: Catalog, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "prompts.jsonl", ["Why is the sky blue?", "Tell me a joke", 5])
    result = run(catalog, [path], eval_set="prompts")
    assert (result.ingested, result.quarantined) == (2, 1)
    assert quarantine(catalog, result.batch_id) == [(3, 0, "row is not a JSON object (got number)")]
