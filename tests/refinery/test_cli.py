"""The CLI contract: one JSON object on stdout with --json, exit codes 0/1/2, clear one-line errors, help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from refinery.cli import app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _invoke(runner: CliRunner, ws: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--workspace", str(ws), "--quiet", *args])
    return result.exit_code, result.stdout, result.stderr


def _rows(folder: Path, n: int = 10, bad: int = 0) -> Path:
    lines = [json.dumps({"instruction": f"say {i}", "input": "", "output": f"answer {i}"}) for i in range(n)] + [
        "{not json"
    ] * bad
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_command_has_help(runner: CliRunner) -> None:
    def walk(command: object, prefix: list[str]) -> list[list[str]]:
        found = [prefix]
        for name, sub in getattr(command, "commands", {}).items():
            found += walk(sub, [*prefix, name])
        return found

    paths = walk(get_command(app), [])
    assert len(paths) >= 12
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Usage" in result.stdout


def test_ingest_json_is_one_object_and_counts_add_up(runner: CliRunner, tmp_path: Path) -> None:
    code, out, _ = _invoke(runner, tmp_path / "ws", "ingest", str(_rows(tmp_path, 10, bad=2)), "--json")
    assert code == 0
    payload = json.loads(out)  # exactly one JSON document
    assert {"batch_id", "rows_read", "ingested", "quarantined", "new_records"} <= set(payload)
    assert payload["rows_read"] == payload["ingested"] + payload["quarantined"] == 12
    code, out, _ = _invoke(runner, tmp_path / "ws", "sql", "SELECT file, line, reason FROM quarantine", "--json")
    rows = json.loads(out)
    assert [r["line"] for r in rows] == [11, 12] and all(r["reason"].startswith("malformed JSON") for r in rows)


def test_too_many_bad_rows_exit_1_after_storing_everything(runner: CliRunner, tmp_path: Path) -> None:
    code, out, err = _invoke(
        runner, tmp_path / "ws", "ingest", str(_rows(tmp_path, 4, bad=4)), "--max-bad-ratio", "0.25", "--json"
    )
    assert code == 1 and "max-bad-ratio" in err
    assert json.loads(out)["quarantined"] == 4
    code, out, _ = _invoke(runner, tmp_path / "ws", "sql", "SELECT count(*) AS n FROM quarantine", "--json")
    assert json.loads(out) == [{"n": 4}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "{data}", "--format", "yaml"], "format"),
        (["ingest", "{data}", "--map", "textuser"], "FIELD=ROLE"),
        (["ingest", "{data}", "--format", "csv", "--map", "text=narrator"], "narrator"),
        (["scan", "--checks", "nope"], "unknown check"),
        (["lineage", "zzz_123"], "not an id"),
        (["lineage", "snap_0000000000000000"], "no snapshot"),
        (["snapshot", "create"], "refinery scan"),
        (["train", "--snapshot", "snap_0000000000000000"], "no snapshot"),
        (["eval", "--adapter", "adp_0000000000000000"], "no adapter"),
    ],
)
def test_usage_errors_exit_2_with_one_line(runner: CliRunner, tmp_path: Path, args: list[str], message: str) -> None:
    data = _rows(tmp_path)
    _invoke(runner, tmp_path / "ws", "ingest", str(data))
    code, out, err = _invoke(runner, tmp_path / "ws", *[a.replace("{data}", str(data)) for a in args])
    assert code == 2, err
    assert message in err and out == ""
    assert len(err.strip().splitlines()) == 1, err


def test_scan_with_a_missing_embedding_model_folder_is_a_one_line_usage_error(
    runner: CliRunner, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    _invoke(runner, ws, "ingest", str(_rows(tmp_path)))
    missing = tmp_path / "nonexistent" / "folder"
    config = tmp_path / "checks.yaml"
    config.write_text(f"outlier: {{model: {missing}}}\n")
    code, out, err = _invoke(runner, ws, "scan", "--checks", "outlier", "--config", str(config))
    assert code == 2, err
    assert str(missing) in err and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_sql_is_read_only_and_reports_sql_errors(runner: CliRunner, tmp_path: Path) -> None:
    _invoke(runner, tmp_path / "ws", "ingest", str(_rows(tmp_path)))
    code, _, err = _invoke(runner, tmp_path / "ws", "sql", "DELETE FROM records")
    assert code == 2 and "SQL error" in err
    code, _, err = _invoke(runner, tmp_path / "ws", "sql", "SELEC 1")
    assert code == 2 and "SQL error" in err
    code, out, _ = _invoke(runner, tmp_path / "ws", "sql", "SELECT count(*) AS n FROM records", "--csv")
    assert code == 0 and out.splitlines() == ["n", "10"]


def test_snapshot_verify_detects_tampering(runner: CliRunner, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _invoke(runner, ws, "ingest", str(_rows(tmp_path, 40)))
    _invoke(runner, ws, "scan")
    code, out, _ = _invoke(runner, ws, "snapshot", "create", "--json")
    snap = json.loads(out)
    code, out, _ = _invoke(runner, ws, "snapshot", "verify", snap["snapshot_id"], "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    (Path(snap["path"]) / "validation.parquet").write_bytes(b"garbage")
    code, _, err = _invoke(runner, ws, "snapshot", "verify", snap["snapshot_id"])
    assert code == 1 and "validation.parquet was modified" in err
    code, out, _ = _invoke(runner, ws, "snapshot", "list", "--json")
    assert [s["snapshot_id"] for s in json.loads(out)["snapshots"]] == [snap["snapshot_id"]]


def test_schema_export_writes_json_schemas(runner: CliRunner, tmp_path: Path) -> None:
    code, _, _ = _invoke(runner, tmp_path / "ws", "schema", "export", str(tmp_path / "schemas"))
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "schemas").iterdir())
    assert "record.schema.json" in names and "manifest.schema.json" in names
    record = json.loads((tmp_path / "schemas" / "record.schema.json").read_text())
    assert "messages" in record["properties"] and record["$id"].endswith("record.schema.json")


def test_schema_export_json_and_the_config_schemas_hold_every_option_with_its_default(
    runner: CliRunner, tmp_path: Path
) -> None:
    from curation.checks.registry import check_configs
    from curation.snapshot import SnapshotPolicy
    from eval.runner import EvalConfig
    from training.config import TrainConfig

    code, out, _ = _invoke(runner, tmp_path / "ws", "schema", "export", str(tmp_path / "schemas"), "--json")
    assert code == 0
    payload = json.loads(out)
    files = {Path(f).name for f in payload["files"]}
    assert payload["folder"] == str((tmp_path / "schemas").resolve())
    assert files == {p.name for p in (tmp_path / "schemas").iterdir()}

    def schema(name: str) -> dict:
        assert f"{name}.schema.json" in files
        loaded: dict = json.loads((tmp_path / "schemas" / f"{name}.schema.json").read_text())
        return loaded

    configs = {"train_config": TrainConfig, "eval_config": EvalConfig, "snapshot_policy": SnapshotPolicy}
    for name, model in configs.items():
        found = schema(name)
        defaults = model().model_dump(mode="json")
        assert set(found["properties"]) == set(defaults)  # every option, whatever options are added later
        for field, prop in found["properties"].items():
            assert prop["default"] == defaults[field], f"{name}.{field}"
            referenced = found.get("$defs", {}).get(str(prop.get("$ref", "")).rsplit("/", 1)[-1], {})
            assert prop.get("description") or referenced.get("description"), f"{name}.{field} has no help text"
    assert schema("train_config")["properties"]["epochs"]["default"] == TrainConfig().epochs
    scan = schema("scan_config")
    assert set(scan["properties"]) == {*check_configs(), "executor"} and scan["additionalProperties"] is False
    executor = scan["$defs"]["ExecutorConfig"]["properties"]
    assert executor["kind"]["default"] == "local" and executor["shard_records"]["default"] == 20_000
    near_dup = scan["$defs"]["NearDupConfig"]["properties"]
    assert near_dup["threshold"]["default"] == 0.7 and near_dup["ngram"]["default"] == 5
    assert scan["properties"]["near_dup"]["default"] is None  # a check not named keeps its own defaults


def test_workspace_comes_from_the_environment(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REFINERY_WORKSPACE", str(tmp_path / "envws"))
    result = runner.invoke(app, ["--quiet", "ingest", str(_rows(tmp_path)), "--json"])
    assert result.exit_code == 0
    assert (tmp_path / "envws" / "catalog.duckdb").is_file()


def test_typer_app_is_the_console_script() -> None:
    assert isinstance(app, typer.Typer)


def test_scan_near_dup_options_reach_the_check(runner: CliRunner, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    lines = [
        json.dumps(
            {"instruction": "please tell me the opening hours of the main library on saturday", "output": "9-5"}
        ),
        json.dumps({"instruction": "please tell me the opening hours of the main library on sunday", "output": "9-5"}),
        json.dumps({"instruction": "what is the capital city of france and why", "output": "Paris"}),
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    _invoke(runner, ws, "ingest", str(tmp_path / "d.jsonl"))
    code, out, err = _invoke(
        runner, ws, "scan", "--checks", "near_dup", "--scope", "prompt", "--threshold", "0.6", "--json"
    )
    assert code == 0, err
    payload = json.loads(out)
    assert payload["near_dup_prompt"]["threshold"] == 0.6 and payload["near_dup_prompt"]["duplicates"] == 1
    code, _, err = _invoke(runner, ws, "scan", "--checks", "exact", "--threshold", "0.8")
    assert code == 2 and "near_dup" in err


def test_snapshot_check_lists_new_records_that_near_duplicate_members(runner: CliRunner, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _invoke(runner, ws, "ingest", str(_rows(tmp_path, 40)))
    _invoke(runner, ws, "scan")
    snap = json.loads(_invoke(runner, ws, "snapshot", "create", "--json")[1])
    new = tmp_path / "new.jsonl"
    new.write_text(
        json.dumps({"instruction": "say 7", "input": "", "output": "answer 7"})  # a copy of a snapshot row
        + "\n"
        + json.dumps({"instruction": "something else entirely", "input": "", "output": "unrelated"})
        + "\n"
    )
    batch = json.loads(_invoke(runner, ws, "ingest", str(new), "--json")[1])
    code, out, err = _invoke(
        runner, ws, "snapshot", "check", snap["snapshot_id"], "--batch", batch["batch_id"], "--json"
    )
    assert code == 0, err
    matches = json.loads(out)["matches"]
    assert len(matches) == 1 and matches[0]["similarity"] == 1.0
    code, _, err = _invoke(runner, ws, "snapshot", "check", snap["snapshot_id"], "--batch", "batch_nope")
    assert code == 2 and "unknown batch" in err


def test_invalid_training_config_is_a_one_line_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _invoke(runner, ws, "ingest", str(_rows(tmp_path, 40)))
    _invoke(runner, ws, "scan")
    snap = json.loads(_invoke(runner, ws, "snapshot", "create", "--json")[1])
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: -1\nbatch_size: 0\n")
    code, out, err = _invoke(runner, ws, "train", "--snapshot", snap["snapshot_id"], "--config", str(bad))
    assert code == 2 and out == ""
    assert "learning_rate" in err and "batch_size" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_demo_json_is_one_object_on_stdout_naming_the_stored_verdict(
    runner: CliRunner, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from refinery.workspace import open_workspace

    ws = tmp_path / "ws"
    args = ["demo", "--n-train", "400", "--max-steps", "2", "--eval-limit", "8", "--base-model", str(tiny_model_dir)]
    code, out, err = _invoke(runner, ws, *args, "--json")
    payload = json.loads(out)  # the whole of stdout is one JSON object: the step tables went to stderr
    assert out.count("\n") == 1 and "step 8/8" in err and "gate verdict" in err
    (run,) = open_workspace(ws).catalog.query("SELECT eval_id, adapter_id, snapshot_id, verdict, reason FROM eval_runs")
    assert payload == {"workspace": str(ws.resolve()), **run}
    assert code == (0 if run["verdict"] == "pass" else 1)
