"""`refinery promote / rollback / registry` through the real CLI, on a workspace whose catalog rows are inserted."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refinery.cli import app
from refinery.cli_registry import register
from refinery.workspace import open_workspace

register(app)  # idempotent: a no-op once refinery.cli registers the commands itself

T0 = datetime(2026, 1, 1, 12, 0, 0)


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REFINERY_ACTOR", "carol")
    folder = tmp_path / "ws"
    catalog = open_workspace(folder).catalog
    with catalog.write() as con:
        con.execute(
            "INSERT INTO snapshots VALUES ('snap_test', NULL, NULL, '/nowhere', 'sha', '{}', 10, 2, 2, ?)", [T0]
        )
        for i, (adapter_id, verdict) in enumerate([("adp_a", "pass"), ("adp_b", "pass"), ("adp_c", "fail")]):
            con.execute(
                "INSERT INTO adapters VALUES (?, 'snap_test', 'base_test', '/nowhere', 'sha', '{}', 1.0, 1.1, ?)",
                [adapter_id, T0 + timedelta(minutes=10 * i)],
            )
            con.execute(
                "INSERT INTO eval_runs VALUES (?, ?, 'snap_test', 'heldout', 'hash', 'accuracy', 0.8, '{}', ?, "
                "0.1, 0.4, ?, '{}', '/nowhere', ?)",
                [f"eval_{adapter_id}", adapter_id, verdict, f"{verdict}: reason", T0 + timedelta(minutes=10 * i + 1)],
            )
        con.execute(
            "INSERT INTO adapters VALUES ('adp_new', 'snap_test', 'base_test', '/nowhere', 'sha', '{}', 1, 1, ?)",
            [T0 + timedelta(hours=1)],
        )
    return folder


def _invoke(ws: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--workspace", str(ws), "--quiet", *args])
    return result.exit_code, result.stdout, result.stderr


def test_register_is_idempotent_and_commands_have_help() -> None:
    register(app)
    names = [info.name for info in app.registered_commands]
    for name in ("promote", "rollback", "registry"):
        assert names.count(name) == 1
        result = CliRunner().invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.stdout


@pytest.mark.parametrize(
    ("adapter", "message"), [("adp_new", "never been evaluated"), ("adp_c", "eval_adp_c failed the gate")]
)
def test_promote_without_a_passing_verdict_exits_1(ws: Path, adapter: str, message: str) -> None:
    code, out, err = _invoke(ws, "promote", adapter, "--json")
    error = json.loads(out)  # under --json the error is also one JSON object on stdout
    assert code == 1 and error["exit_code"] == 1 and message in error["error"]
    assert "no passing verdict" in err and message in err and "--force --reason" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [(["promote", "adp_zzz"], "no adapter adp_zzz"), (["promote", "adp_c", "--force"], "--force needs --reason")],
)
def test_usage_problems_exit_2(ws: Path, args: list[str], message: str) -> None:
    code, out, err = _invoke(ws, *args)
    assert code == 2 and out == "" and message in err
    assert len(err.strip().splitlines()) == 1


def test_promote_force_rollback_and_registry(ws: Path) -> None:
    code, out, err = _invoke(ws, "promote", "adp_a", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert (first["action"], first["eval_id"], first["actor"], first["noop"]) == (
        "promote",
        "eval_adp_a",
        "carol",
        False,
    )
    code, out, _ = _invoke(ws, "promote", "adp_a", "--json")
    assert code == 0 and json.loads(out)["noop"] is True
    code, out, _ = _invoke(ws, "promote", "adp_a")
    assert code == 0 and "already the promoted adapter" in out

    code, out, err = _invoke(ws, "promote", "adp_c", "--force", "--reason", "customer demo", "--json")
    assert code == 0, err
    forced = json.loads(out)
    assert (forced["action"], forced["eval_id"], forced["reason"], forced["previous_adapter_id"]) == (
        "force_promote",
        None,
        "customer demo",
        "adp_a",
    )

    code, out, _ = _invoke(ws, "registry", "--json")
    listing = json.loads(out)
    assert listing["current"] == "adp_c"
    assert {r["adapter_id"]: r["status"] for r in listing["adapters"]} == {
        "adp_a": "retired",
        "adp_b": "passed",
        "adp_c": "promoted",
        "adp_new": "unevaluated",
    }

    code, out, err = _invoke(ws, "rollback", "--json")
    assert code == 0, err
    back = json.loads(out)
    assert (back["action"], back["adapter_id"], back["previous_adapter_id"]) == ("rollback", "adp_a", "adp_c")
    code, out, _ = _invoke(ws, "registry")
    assert code == 0 and "current adapter: adp_a" in out

    code, out, err = _invoke(ws, "rollback")
    assert code == 2 and out == "" and "nothing to roll back to" in err

    code, out, _ = _invoke(ws, "lineage", "adp_c", "--json")
    node = json.loads(out)
    assert [(p["action"], p["reason"]) for p in node["promotions"]] == [
        ("force_promote", "customer demo"),
        ("rollback", None),
    ]
    code, out, err = _invoke(ws, "lineage", forced["event_id"], "--json")
    assert code == 0, err
    tree = json.loads(out)
    assert tree["kind"] == "promotion" and tree["parents"][0]["id"] == "adp_c"


def test_rollback_with_nothing_promoted_exits_2(ws: Path) -> None:
    code, out, err = _invoke(ws, "rollback", "--json")
    assert code == 2 and json.loads(out)["exit_code"] == 2 and "no adapter has been promoted" in err
    code, out, _ = _invoke(ws, "registry", "--json")
    assert code == 0 and json.loads(out)["current"] is None
