"""The adapter registry: promote an adapter that passed the gate, roll back, list adapters with their verdicts.

Every promote, forced promote and rollback is one row of the ``promotions`` table (who, when, why, which
verdict it relied on) plus a lineage edge from the event to the adapter it made current. The current adapter
is the ``adapter_id`` of the latest event. Promotions form a stack: a promote pushes an adapter, a rollback
pops back to the adapter that was current before the latest promotion still in force, so repeated rollbacks
walk further back. Each operation reads the registry and writes its event in one short write transaction.

Imports only ``schemas`` (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import getpass
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

import duckdb

from schemas.catalog import Catalog, add_lineage_edge, utcnow
from schemas.ids import canonical_json, sha256_text

ACTOR_ENV = "REFINERY_ACTOR"
EVENT_PREFIX = "promo_"
Action = Literal["promote", "rollback", "force_promote"]
_COLUMNS = "event_id, seq, adapter_id, action, previous_adapter_id, eval_id, reason, actor, created_at"


class RegistryError(Exception):
    """A registry operation that cannot be done as asked (unknown adapter, --force without a reason, ...)."""


class PromotionRefused(RegistryError):
    """The adapter has no passing verdict: the gate refuses it (override with force and a reason)."""


@dataclass(frozen=True)
class PromotionEvent:
    event_id: str
    seq: int
    adapter_id: str  # the adapter current after the event
    action: str
    previous_adapter_id: str | None
    eval_id: str | None
    reason: str | None
    actor: str
    created_at: datetime
    #: True when nothing was written: the adapter asked for was already current (this is the event that made it so)
    noop: bool = False

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["created_at"] = self.created_at.isoformat()
        return payload


def actor() -> str:
    """Who acts: ``$REFINERY_ACTOR`` if set, else the OS user, else 'unknown'."""
    named = os.environ.get(ACTOR_ENV, "").strip()
    if named:
        return named
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return "unknown"


def _event(row: tuple[Any, ...], noop: bool = False) -> PromotionEvent:
    event_id, seq, adapter_id, action, previous, eval_id, reason, who, created_at = row
    return PromotionEvent(event_id, seq, adapter_id, action, previous, eval_id, reason, who, created_at, noop=noop)


def _events(con: duckdb.DuckDBPyConnection) -> list[PromotionEvent]:
    return [_event(r) for r in con.execute(f"SELECT {_COLUMNS} FROM promotions ORDER BY seq").fetchall()]


def _stack(events: list[PromotionEvent]) -> list[PromotionEvent]:
    """The promotions still in force, oldest first: promotes push, rollbacks pop."""
    stack: list[PromotionEvent] = []
    for event in events:
        if event.action == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(event)
    return stack


def _record(
    con: duckdb.DuckDBPyConnection,
    adapter_id: str,
    action: Action,
    previous: str | None,
    eval_id: str | None,
    reason: str | None,
) -> PromotionEvent:
    seq = int(con.execute("SELECT coalesce(max(seq), 0) + 1 FROM promotions").fetchone()[0])  # type: ignore[index]
    created_at = utcnow()
    who = actor()
    body = {
        "seq": seq,
        "adapter": adapter_id,
        "action": action,
        "previous": previous,
        "eval": eval_id,
        "reason": reason,
        "actor": who,
        "at": created_at.isoformat(),
    }
    event = PromotionEvent(
        event_id=EVENT_PREFIX + sha256_text(canonical_json(body))[:16],
        seq=seq,
        adapter_id=adapter_id,
        action=action,
        previous_adapter_id=previous,
        eval_id=eval_id,
        reason=reason,
        actor=who,
        created_at=created_at,
    )
    con.execute(
        f"INSERT INTO promotions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [event.event_id, seq, adapter_id, action, previous, eval_id, reason, who, created_at],
    )
    add_lineage_edge(con, event.event_id, "promotion", adapter_id, "adapter", action)
    if eval_id is not None:
        add_lineage_edge(con, event.event_id, "promotion", eval_id, "eval", "relies_on")
    return event


def promote(catalog: Catalog, adapter_id: str, force: bool = False, reason: str | None = None) -> PromotionEvent:
    """Make ``adapter_id`` the current adapter if its latest eval run passed the gate.

    ``force=True`` with a non-empty ``reason`` overrides a missing or failing verdict (recorded as
    ``force_promote``); with a passing verdict it is an ordinary promote that also records the reason.
    Promoting the current adapter writes nothing and returns the event that made it current, ``noop=True``.
    """
    reason = reason.strip() if reason and reason.strip() else None
    if force and reason is None:
        raise RegistryError("--force needs --reason TEXT: a forced promotion records why the gate was overridden")
    with catalog.write() as con:
        if not con.execute("SELECT 1 FROM adapters WHERE adapter_id = ?", [adapter_id]).fetchone():
            raise RegistryError(f"no adapter {adapter_id} in the catalog (train one with `refinery train`)")
        stack = _stack(_events(con))
        previous = stack[-1].adapter_id if stack else None
        if previous == adapter_id:
            return _current_event(con, noop=True)
        latest = con.execute(
            "SELECT eval_id, verdict, reason FROM eval_runs WHERE adapter_id = ? "
            "ORDER BY created_at DESC, eval_id DESC LIMIT 1",
            [adapter_id],
        ).fetchone()
        if latest is not None and latest[1] == "pass":
            return _record(con, adapter_id, "promote", previous, latest[0], reason)
        if not force:
            if latest is None:
                why = "it has never been evaluated (run `refinery eval --adapter ID`)"
            else:
                why = f"its latest eval run {latest[0]} failed the gate: {latest[2]}"
            raise PromotionRefused(
                f"refused to promote {adapter_id}: no passing verdict, {why}; "
                "override with --force --reason TEXT (both are recorded)"
            )
        return _record(con, adapter_id, "force_promote", previous, None, reason)


def rollback(catalog: Catalog) -> PromotionEvent:
    """Restore the adapter that was current before the latest promotion still in force."""
    with catalog.write() as con:
        stack = _stack(_events(con))
        if not stack:
            raise RegistryError("nothing to roll back: no adapter has been promoted")
        if len(stack) < 2:
            raise RegistryError(
                f"nothing to roll back to: {stack[-1].adapter_id} is the only promoted adapter left in the history"
            )
        return _record(con, stack[-2].adapter_id, "rollback", stack[-1].adapter_id, None, None)


def _current_event(con: duckdb.DuckDBPyConnection, noop: bool = False) -> PromotionEvent:
    row = con.execute(f"SELECT {_COLUMNS} FROM promotions ORDER BY seq DESC LIMIT 1").fetchone()
    assert row is not None
    return _event(row, noop=noop)


def current(catalog: Catalog) -> PromotionEvent | None:
    """The event that made the current adapter current (its ``adapter_id``), or None before any promotion."""
    with catalog.read() as con:
        if not con.execute("SELECT 1 FROM promotions LIMIT 1").fetchone():
            return None
        return _current_event(con)


def history(catalog: Catalog, adapter_id: str | None = None) -> list[PromotionEvent]:
    """Every event, oldest first; with ``adapter_id``, those that made it current or replaced it."""
    with catalog.read() as con:
        if adapter_id is None:
            return _events(con)
        rows = con.execute(
            f"SELECT {_COLUMNS} FROM promotions WHERE adapter_id = ? OR previous_adapter_id = ? ORDER BY seq",
            [adapter_id, adapter_id],
        ).fetchall()
        return [_event(r) for r in rows]


def list_registry(catalog: Catalog) -> list[dict[str, Any]]:
    """Rows of the ``registry`` view: every adapter with status, latest verdict and promotion time."""
    return catalog.query("SELECT * FROM registry ORDER BY created_at, adapter_id")
