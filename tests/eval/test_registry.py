"""The adapter registry on a real DuckDB catalog: the gate on promote, forced promotions, rollback, statuses."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from eval.registry import PromotionRefused, RegistryError, current, history, list_registry, promote, rollback
from schemas.catalog import Catalog

T0 = datetime(2026, 1, 1, 12, 0, 0)


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    monkeypatch.setenv("REFINERY_ACTOR", "alice")
    cat = Catalog(tmp_path / "catalog.duckdb")
    cat.migrate()
    return cat


def add_adapter(catalog: Catalog, adapter_id: str, minute: int = 0) -> str:
    with catalog.write() as con:
        con.execute(
            "INSERT INTO adapters VALUES (?, 'snap_test', 'base_test', '/nowhere', 'sha', '{}', 1.0, 1.1, ?)",
            [adapter_id, T0 + timedelta(minutes=minute)],
        )
    return adapter_id


def add_eval(catalog: Catalog, adapter_id: str, verdict: str, minute: int) -> str:
    eval_id = f"eval_{adapter_id[4:]}_{minute:03d}"
    with catalog.write() as con:
        con.execute(
            "INSERT INTO eval_runs VALUES (?, ?, 'snap_test', 'heldout', 'hash', 'accuracy', 0.8, "
            "'{\"base_zero_shot\": 0.5}', ?, 0.1, 0.4, ?, '{}', '/nowhere', ?)",
            [eval_id, adapter_id, verdict, f"{verdict} on purpose", T0 + timedelta(minutes=minute)],
        )
    return eval_id


def passing(catalog: Catalog, adapter_id: str, minute: int = 0) -> str:
    add_adapter(catalog, adapter_id, minute)
    add_eval(catalog, adapter_id, "pass", minute + 1)
    return adapter_id


def test_promote_refuses_an_adapter_without_a_verdict(catalog: Catalog) -> None:
    add_adapter(catalog, "adp_a")
    with pytest.raises(PromotionRefused, match="never been evaluated"):
        promote(catalog, "adp_a")
    assert current(catalog) is None and history(catalog) == []


def test_promote_refuses_a_failing_latest_verdict(catalog: Catalog) -> None:
    add_adapter(catalog, "adp_a")
    add_eval(catalog, "adp_a", "pass", 1)
    failed = add_eval(catalog, "adp_a", "fail", 2)  # the latest run decides
    with pytest.raises(PromotionRefused, match=f"{failed} failed the gate: fail on purpose"):
        promote(catalog, "adp_a")
    assert current(catalog) is None


def test_promote_relies_on_the_latest_passing_verdict_and_adds_lineage(catalog: Catalog) -> None:
    add_adapter(catalog, "adp_a")
    add_eval(catalog, "adp_a", "fail", 1)
    passed = add_eval(catalog, "adp_a", "pass", 2)
    event = promote(catalog, "adp_a")
    assert (event.action, event.adapter_id, event.eval_id, event.previous_adapter_id) == (
        "promote",
        "adp_a",
        passed,
        None,
    )
    assert event.event_id.startswith("promo_") and event.actor == "alice" and not event.noop
    current_event = current(catalog)
    assert current_event is not None and current_event.adapter_id == "adp_a"
    edges = catalog.query(
        "SELECT parent_id, parent_kind, relation FROM lineage_edges WHERE child_id = ?", [event.event_id]
    )
    assert sorted((e["parent_kind"], e["parent_id"], e["relation"]) for e in edges) == [
        ("adapter", "adp_a", "promote"),
        ("eval", passed, "relies_on"),
    ]


def test_unknown_adapter_and_force_without_reason_are_usage_errors(catalog: Catalog) -> None:
    add_adapter(catalog, "adp_a")
    with pytest.raises(RegistryError, match="no adapter adp_zzz") as unknown:
        promote(catalog, "adp_zzz")
    assert not isinstance(unknown.value, PromotionRefused)
    for reason in (None, "", "   "):
        with pytest.raises(RegistryError, match="--force needs --reason") as forced:
            promote(catalog, "adp_a", force=True, reason=reason)
        assert not isinstance(forced.value, PromotionRefused)
    assert history(catalog) == []


def test_force_with_a_reason_overrides_the_gate_and_is_recorded(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_adapter(catalog, "adp_a")
    add_eval(catalog, "adp_a", "fail", 1)
    monkeypatch.setenv("REFINERY_ACTOR", "bob")
    event = promote(catalog, "adp_a", force=True, reason="hotfix for incident 42")
    row = catalog.query("SELECT * FROM promotions")[0]
    assert (row["action"], row["eval_id"], row["reason"], row["actor"]) == (
        "force_promote",
        None,
        "hotfix for incident 42",
        "bob",
    )
    assert event.action == "force_promote" and event.event_id == row["event_id"]


def test_force_on_a_passing_adapter_is_an_ordinary_promote_with_its_reason(catalog: Catalog) -> None:
    passing(catalog, "adp_a")
    event = promote(catalog, "adp_a", force=True, reason="ship it")
    assert event.action == "promote" and event.eval_id is not None and event.reason == "ship it"


def test_promoting_the_current_adapter_is_a_noop(catalog: Catalog) -> None:
    passing(catalog, "adp_a")
    first = promote(catalog, "adp_a")
    again = promote(catalog, "adp_a")
    assert again.noop and again.event_id == first.event_id
    assert len(history(catalog)) == 1


def test_rollback_restores_the_previous_adapter_and_walks_back(catalog: Catalog) -> None:
    for i, name in enumerate(("adp_a", "adp_b", "adp_c")):
        passing(catalog, name, minute=10 * i)
        promote(catalog, name)
    back = rollback(catalog)
    assert (back.action, back.adapter_id, back.previous_adapter_id, back.eval_id) == (
        "rollback",
        "adp_b",
        "adp_c",
        None,
    )
    assert current(catalog).adapter_id == "adp_b"  # type: ignore[union-attr]
    assert rollback(catalog).adapter_id == "adp_a"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(catalog)
    assert current(catalog).adapter_id == "adp_a"  # type: ignore[union-attr]
    # a new promotion after rollbacks stacks on what is current now
    promote(catalog, "adp_c")
    assert rollback(catalog).adapter_id == "adp_a"
    actions = [e.action for e in history(catalog)]
    assert actions == ["promote", "promote", "promote", "rollback", "rollback", "promote", "rollback"]


def test_rollback_with_nothing_promoted_is_an_error(catalog: Catalog) -> None:
    with pytest.raises(RegistryError, match="no adapter has been promoted"):
        rollback(catalog)


def test_registry_lists_status_verdict_and_promotion_time(catalog: Catalog) -> None:
    passing(catalog, "adp_a", minute=0)
    passing(catalog, "adp_b", minute=10)
    passing(catalog, "adp_c", minute=20)
    add_adapter(catalog, "adp_d", minute=30)
    add_eval(catalog, "adp_d", "fail", 31)
    add_adapter(catalog, "adp_e", minute=40)
    promote(catalog, "adp_a")
    promote(catalog, "adp_b")
    rows = {r["adapter_id"]: r for r in list_registry(catalog)}
    assert [r["adapter_id"] for r in list_registry(catalog)] == ["adp_a", "adp_b", "adp_c", "adp_d", "adp_e"]
    assert {k: r["status"] for k, r in rows.items()} == {
        "adp_a": "retired",
        "adp_b": "promoted",
        "adp_c": "passed",
        "adp_d": "failed",
        "adp_e": "unevaluated",
    }
    assert rows["adp_b"]["is_current"] and not rows["adp_a"]["is_current"]
    assert rows["adp_a"]["promoted_at"] is not None and rows["adp_c"]["promoted_at"] is None
    assert rows["adp_d"]["verdict"] == "fail" and rows["adp_e"]["verdict"] is None
    rollback(catalog)
    rows = {r["adapter_id"]: r for r in list_registry(catalog)}
    assert (rows["adp_a"]["status"], rows["adp_b"]["status"]) == ("promoted", "retired")
    assert catalog.query("SELECT adapter_id, action FROM current_adapter") == [
        {"adapter_id": "adp_a", "action": "rollback"}
    ]
