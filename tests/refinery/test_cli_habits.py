"""The CLI's habits (issue 19), through the real `refinery` command: --version and shell completion, flags without
a `<bool>` placeholder, -q before or after the command, errors as one JSON object under --json, one exit-code
convention and one rule for which commands create a workspace, ingest's warnings and --max-bad-ratio default, the
ingest progress line in bytes and rows, the lineage tree, and the environment-variable page."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner, Result

from refinery.cli import app
from schemas.catalog import Catalog, add_lineage_edge, utcnow
from schemas.progress import format_bytes
from tests.support.cli import invoke_cli, run_cli

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _alpaca(folder: Path, n: int = 10, bad: int = 0, name: str = "data.jsonl") -> Path:
    lines = [json.dumps({"instruction": f"say {i}", "input": "", "output": f"answer {i}"}) for i in range(n)]
    path = folder / name
    path.write_text("".join(line + "\n" for line in [*lines, *["{not json"] * bad]))
    return path


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ------------------------------------------------------------------------------------------ --version, completion


def test_version_prints_the_installed_version_and_exits_0() -> None:
    result = _cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"refinery {version('refinery')}"


def test_shell_completion_is_offered_and_prints_a_script() -> None:
    help_text = _cli("--help").stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text
    # the installed console script in a process of its own (the completion script names the program it was
    # started as); never --install-completion here: it edits the shell's rc file
    script = subprocess.run(
        [str(Path(sys.executable).with_name("refinery")), "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert script.returncode == 0 and "_REFINERY_COMPLETE=complete_bash" in script.stdout, script.stderr


# ------------------------------------------------------------------------------------------ --help


def _commands() -> dict[tuple[str, ...], Any]:
    """Every command and group by path (the root is ``()``), as Typer builds them."""

    def walk(command: Any, path: tuple[str, ...]) -> dict[tuple[str, ...], Any]:
        found = {path: command}
        for name, sub in getattr(command, "commands", {}).items():
            found.update(walk(sub, (*path, name)))
        return found

    return walk(get_command(app), ())


def _every_command() -> list[list[str]]:
    return [list(path) for path in _commands()]


def test_no_help_shows_a_bool_placeholder_and_every_command_takes_quiet() -> None:
    paths = _every_command()
    assert len(paths) > 30
    for path in paths:
        text = _cli(*path, "--help").stdout
        assert "--help" in text and "<bool>" not in text, path
        assert "--quiet" in text and "-q" in text, path
    assert "<float>" in _cli("scan", "--help").stdout  # options that take a value still show its type


def test_main_help_links_the_environment_variable_page() -> None:
    assert "docs/ENVIRONMENT_VARIABLES.md" in " ".join(_cli("--help").stdout.split())


# ------------------------------------------------------------------------------------------ -q anywhere, progress


def test_quiet_works_after_the_command_too_and_ingest_progress_counts_bytes_and_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REFINERY_PROGRESS")  # bars on (stderr is not a terminal here: one plain line at the end)
    ws = str(tmp_path / "ws")
    loud = _cli("--workspace", ws, "ingest", str(_alpaca(tmp_path, 12, name="a.jsonl")))
    assert loud.exit_code == 0, loud.stderr
    line = next(x for x in loud.stderr.splitlines() if x.startswith("ingest a"))
    assert re.fullmatch(r"ingest a \(12 rows\): [\d.]+ (B|kB) of [\d.]+ (B|kB) in \d+s, [\d.]+ (B|kB|MB)/s done", line)

    after = _cli("--workspace", ws, "ingest", str(_alpaca(tmp_path, 13, name="b.jsonl")), "-q")
    assert after.exit_code == 0 and "ingest b" not in after.stderr
    monkeypatch.delenv("REFINERY_PROGRESS")  # -q set it for this process; start loud again
    before = _cli("--workspace", ws, "-q", "ingest", str(_alpaca(tmp_path, 14, name="c.jsonl")))
    assert before.exit_code == 0 and "ingest c" not in before.stderr
    monkeypatch.delenv("REFINERY_PROGRESS")
    nested = _cli("--workspace", ws, "snapshot", "list", "--quiet", "--json")
    assert nested.exit_code == 0 and json.loads(nested.stdout) == {"snapshots": []}


def test_byte_counts_read_with_units() -> None:
    assert [format_bytes(n) for n in (12, 709_540, 1_500_000, 3.2e9)] == ["12 B", "709.5 kB", "1.5 MB", "3.2 GB"]


# ------------------------------------------------------------------------------------------ errors under --json


def test_under_json_an_error_is_one_object_on_stdout_and_one_line_on_stderr(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = invoke_cli(missing, "lineage", "snap_0000000000000000", "--json")
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["exit_code"] == 2 and str(missing) in payload["error"]
    assert payload["error"] in " ".join(_one_line(result.stderr).split())

    plain = invoke_cli(missing, "lineage", "snap_0000000000000000")  # without --json: stdout stays empty
    assert plain.exit_code == 2 and plain.stdout == ""

    ws = tmp_path / "ws"
    run_cli(ws, "ingest", str(_alpaca(tmp_path)))
    unknown = invoke_cli(ws, "lineage", "snap_0000000000000000", "--json")  # an InputError of the library
    assert unknown.exit_code == 2 and json.loads(unknown.stdout) == {
        "error": "no snapshot snap_0000000000000000 in the catalog",
        "exit_code": 2,
    }
    parser = invoke_cli(ws, "scan", "--json", "--ngram", "many")  # an argument the parser refuses
    assert parser.exit_code == 2 and json.loads(parser.stdout)["exit_code"] == 2
    assert "Invalid value for '--ngram'" in json.loads(parser.stdout)["error"]


def test_under_json_a_failure_is_an_object_with_exit_code_1(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    run_cli(ws, "ingest", str(_alpaca(tmp_path, 40)))
    run_cli(ws, "scan", "--checks", "exact")
    snap = run_cli(ws, "snapshot", "create")
    (Path(snap["path"]) / "train.parquet").write_bytes(b"changed")
    result = invoke_cli(ws, "snapshot", "verify", snap["snapshot_id"], "--json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["exit_code"] == 1 and "train.parquet was modified" in payload["error"]


# ------------------------------------------------------------------------------------------ workspaces, exit codes

#: Arguments that reach every command's workspace lookup. Left out: ingest and demo (they create the workspace),
#: restore (it creates the workspace it is given as DEST), schema export (it reads no workspace) and review serve
#: (it would start a server if the rule ever broke).
ARGS: dict[tuple[str, ...], list[str]] = {
    ("scan",): [],
    ("train",): ["--snapshot", "snap_0000000000000000"],
    ("eval",): ["--adapter", "adp_0000000000000000"],
    ("lineage",): ["snap_0000000000000000"],
    ("sql",): ["SELECT 1"],
    ("promote",): ["adp_0000000000000000"],
    ("rollback",): [],
    ("registry",): [],
    ("report",): [],
    ("generate",): ["--adapter", "adp_0000000000000000", "hello"],
    ("audit",): [],
    ("forget",): ["--record", "rec_0000000000000000"],
    ("snapshot", "create"): [],
    ("snapshot", "list"): [],
    ("snapshot", "show"): ["snap_0000000000000000"],
    ("snapshot", "verify"): ["snap_0000000000000000"],
    ("snapshot", "check"): ["snap_0000000000000000", "--batch", "batch_0000000000000000"],
    ("snapshot", "diff"): ["snap_0000000000000000", "snap_1111111111111111"],
    ("snapshot", "export"): ["snap_0000000000000000", "out"],
    ("adapter", "merge"): ["adp_0000000000000000", "out"],
    ("review", "stop"): [],
    ("review", "push"): [],
    ("review", "pull"): [],
    ("review", "status"): [],
    ("review", "calibrate"): [],
    ("review", "auto"): [],
    ("pii", "redact"): [],
    ("backup",): ["archive.tar.gz"],
    ("serve",): ["--port", "0"],
    ("token", "create"): ["--name", "ana", "--role", "viewer"],
    ("token", "list"): [],
    ("token", "revoke"): ["tok_0000000000000000"],
}
CREATING_OR_NO_WORKSPACE = {
    ("ingest",),
    ("demo",),
    ("restore",),
    ("schema", "export"),
    ("review", "serve"),
    ("dedup",),  # Parquet shards in, clusters.parquet out: no workspace
}


def _leaves() -> set[tuple[str, ...]]:
    return {path for path, command in _commands().items() if not hasattr(command, "commands")}


def test_the_sweep_covers_every_command() -> None:
    leaves = _leaves()
    assert {("scan",), ("snapshot", "create"), ("ingest",)} <= leaves
    assert sorted(leaves - set(ARGS) - CREATING_OR_NO_WORKSPACE) == [], "add new commands to ARGS"


@pytest.mark.parametrize("command", sorted(ARGS), ids=" ".join)
def test_every_other_command_refuses_a_workspace_without_a_catalog(tmp_path: Path, command: tuple[str, ...]) -> None:
    if command not in _leaves():
        pytest.skip(f"refinery {' '.join(command)} is not registered in this checkout")
    missing = tmp_path / "typo"
    result = invoke_cli(missing, *command, *ARGS[command])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    line = " ".join(_one_line(result.stderr).split())
    assert f"no workspace at {missing}" in line and f"refinery --workspace {missing} ingest" in line
    assert not missing.exists()  # nothing created

    empty = tmp_path / "empty"  # an existing folder without a catalog is refused the same way
    empty.mkdir()
    assert invoke_cli(empty, *command, *ARGS[command]).exit_code == 2
    assert list(empty.iterdir()) == []


def test_a_workspace_path_that_is_a_file_or_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    data = _alpaca(tmp_path)
    for args in (["scan"], ["ingest", str(data)]):
        result = invoke_cli(data, *args)  # the data file given as the workspace
        assert result.exit_code == 2 and "is a file, not a folder" in result.stderr, result.stderr
    below_a_file = invoke_cli(data / "ws", "ingest", str(data))
    assert below_a_file.exit_code == 2 and f"cannot create workspace {data / 'ws'}" in below_a_file.stderr


def test_ingest_creates_the_workspace_the_others_then_use(tmp_path: Path) -> None:
    ws = tmp_path / "new"
    run_cli(ws, "ingest", str(_alpaca(tmp_path)))
    assert (ws / "catalog.duckdb").is_file()
    assert run_cli(ws, "scan", "--checks", "exact")["records"] == 10


# ------------------------------------------------------------------------------------------ ingest: empty, bad rows


def test_empty_input_warns_and_exits_1_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = invoke_cli(tmp_path / "ws", "ingest", str(empty), "--json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)  # still one object: the batch as stored
    assert payload["rows_read"] == 0 and payload["warnings"] == [f"{empty}: no rows (read as jsonl)"]
    assert f"failed: no rows read from {empty}: nothing was ingested" in " ".join(result.stderr.split())
    assert "warning:" in result.stderr


def test_a_fully_quarantined_file_exits_1_under_the_default_ratio_and_is_stored(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    bad = _alpaca(tmp_path, 0, bad=3, name="bad.jsonl")
    result = invoke_cli(ws, "ingest", str(bad))
    assert result.exit_code == 1
    err = " ".join(result.stderr.split())
    batch = Catalog(ws / "catalog.duckdb").scalar("SELECT batch_id FROM ingest_batches")
    assert "3 of 3 rows (100.0%) were quarantined, above --max-bad-ratio 0.5" in err
    assert f"refinery sql \"SELECT file, line, reason FROM quarantine WHERE batch_id = '{batch}'\"" in err
    assert f"{bad}: all 3 rows were quarantined" in err
    shown = run_cli(ws, "sql", f"SELECT line FROM quarantine WHERE batch_id = '{batch}' ORDER BY line")
    assert [r["line"] for r in shown] == [1, 2, 3]  # what the message points at is there

    accepted = invoke_cli(ws, "ingest", str(bad), "--max-bad-ratio", "1", "--json")
    assert accepted.exit_code == 0 and json.loads(accepted.stdout)["already_ingested"] is True
    assert "all 3 rows were quarantined" in accepted.stderr  # still said, no longer a failure


def test_a_few_bad_rows_warn_and_exit_0_and_a_raised_ratio_is_honoured(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    result = invoke_cli(ws, "ingest", str(_alpaca(tmp_path, 9, bad=1)), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["too_many_bad"] is False
    assert "warning: 1 of 10 rows (10.0%) were quarantined: see why with refinery sql" in result.stderr

    mostly_bad = _alpaca(tmp_path, 3, bad=5, name="mostly_bad.jsonl")
    assert invoke_cli(ws, "ingest", str(mostly_bad), "--max-bad-ratio", "0.7").exit_code == 0  # 62.5% <= 70%
    assert invoke_cli(ws, "ingest", str(mostly_bad), "--max-bad-ratio", "2").exit_code == 2  # not a ratio


def test_one_bad_file_among_good_ones_is_named_even_when_the_batch_passes(tmp_path: Path) -> None:
    good = _alpaca(tmp_path, 10, name="good.jsonl")
    bad = _alpaca(tmp_path, 0, bad=2, name="bad.jsonl")
    result = invoke_cli(tmp_path / "ws", "ingest", str(good), str(bad), "--json")
    assert result.exit_code == 0  # 2 of 12 rows
    assert json.loads(result.stdout)["warnings"] == [f"{bad}: all 2 rows were quarantined"]


# ------------------------------------------------------------------------------------------ lineage display


def _evaluated(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A real workspace (ingest, eval set, scan, snapshot through the CLI) plus an adapter and an eval run
    recorded as the pipeline records them."""
    ws = tmp_path / "ws"
    run_cli(ws, "ingest", str(_alpaca(tmp_path, 40)))
    eval_file = tmp_path / "heldout.jsonl"
    eval_file.write_text(json.dumps({"instruction": "say something new", "output": "new"}) + "\n")
    eval_batch = run_cli(ws, "ingest", str(eval_file), "--eval-set", "heldout")["batch_id"]
    run_cli(ws, "scan")
    snap = run_cli(ws, "snapshot", "create")
    catalog = Catalog(ws / "catalog.duckdb")
    with catalog.write() as con:
        con.execute(
            "INSERT INTO base_models VALUES ('base_t', 'package:tiny==1', '/nowhere', ?, ?)", ["a" * 64, utcnow()]
        )
        con.execute(
            "INSERT INTO adapters (adapter_id, snapshot_id, base_model_id, path, manifest_sha256, config_json, "
            "train_loss, val_loss, created_at) VALUES ('adp_1', ?, 'base_t', '/nowhere', 'x', '{}', 0.6696776513, "
            "0.1383017901, ?)",
            [snap["snapshot_id"], utcnow()],
        )
        con.execute(
            "INSERT INTO eval_runs (eval_id, adapter_id, snapshot_id, eval_set, eval_set_hash, metric, "
            "adapter_score, baselines_json, verdict, ci_low, ci_high, reason, thresholds_json, path, created_at) "
            "VALUES ('eval_1', 'adp_1', ?, 'heldout', ?, 'accuracy', 0.6333333333, ?, 'pass', 0.3066666666, "
            "0.4733333333, 'adapter 0.63 beats every baseline', '{}', '/nowhere', ?)",
            [snap["snapshot_id"], "b" * 64, json.dumps({"base_zero_shot": 0.1234567}), utcnow()],
        )
        add_lineage_edge(con, "eval_1", "eval", "adp_1", "adapter", "evaluates")
        add_lineage_edge(con, "eval_1", "eval", eval_batch, "batch", "eval_set")
    return ws, {"eval_batch": eval_batch, "eval_file": str(eval_file), "snapshot": snap["snapshot_id"]}


def test_lineage_shows_the_eval_sets_batch_and_file_with_rounded_key_facts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, made = _evaluated(tmp_path)
    tree = run_cli(ws, "lineage", "eval_1")
    eval_set = [n for n in tree["parents"] if n["kind"] == "batch"]
    assert [(n["id"], n["relation"], n["purpose"]) for n in eval_set] == [(made["eval_batch"], "eval_set", "eval")]
    assert [f["id"] for f in eval_set[0]["parents"]] == [made["eval_file"]]
    snapshot = tree["parents"][0]["parents"][0]
    assert snapshot["policy"]["train_fraction"] == 0.8 and tree["eval_set_hash"] == "b" * 64  # --json has it all

    monkeypatch.setenv("COLUMNS", "400")  # one line per node
    shown = invoke_cli(ws, "lineage", "eval_1")
    assert shown.exit_code == 0, shown.stderr
    text = shown.stdout
    assert "..." not in text and "…" not in text
    node = {_node_of(line): line for line in text.splitlines() if _node_of(line)}
    assert "adapter_score=0.633" in node["eval eval_1"] and "ci=0.307 to 0.473" in node["eval eval_1"]
    assert "baselines=base_zero_shot 0.123" in node["eval eval_1"] and "b" * 64 not in text
    assert "train_loss=0.67" in node["adapter adp_1"] and "base_model=base_t (package:tiny==1)" in node["adapter adp_1"]
    assert "verdicts=eval_1 pass accuracy 0.633" in node["adapter adp_1"]
    assert "relation=eval_set" in node[f"batch {made['eval_batch']}"]
    assert f"file {made['eval_file']}" in node and "policy=" not in node[f"snapshot {made['snapshot']}"]
    assert "basis=policy 40" in node[f"snapshot {made['snapshot']}"]
    scan = next(line for key, line in node.items() if key.startswith("scan "))
    assert "none flagged: " in scan and "exact" in scan
    assert "refinery lineage eval_1 --json" in text


def _node_of(line: str) -> str:
    """'eval eval_1' from a tree line such as '└── eval eval_1  verdict=pass, ...' ('' for other lines)."""
    words = line.lstrip("│├└─ ").split()
    kinds = ("eval", "adapter", "snapshot", "scan", "batch", "file")
    return f"{words[0]} {words[1]}" if len(words) > 1 and words[0] in kinds else ""


# ------------------------------------------------------------------------------------------ the environment page


def test_every_refinery_variable_the_code_reads_is_on_the_environment_page() -> None:
    page = (ROOT / "docs" / "ENVIRONMENT_VARIABLES.md").read_text(encoding="utf-8")
    sources = "\n".join(
        p.read_text(encoding="utf-8")
        for package in ("schemas", "curation", "training", "eval", "refinery")
        for p in sorted((ROOT / package).rglob("*.py"))
    )
    in_code = set(re.findall(r"\bREFINERY_[A-Z0-9]+(?:_[A-Z0-9]+)*\b", sources))
    assert {"REFINERY_WORKSPACE", "REFINERY_PROGRESS", "REFINERY_REVIEW_ATTEMPTS", "REFINERY_EMBED_BACKEND"} <= in_code
    documented = {name for name in in_code if f"`{name}`" in page}
    assert sorted(in_code - documented) == []
    assert "`ARGILLA_API_URL`" in page and "`ARGILLA_API_KEY`" in page
