"""`refinery promote`, `refinery rollback`, `refinery registry`: the adapter registry on the command line.

Exit codes: 0 done (or nothing to do), 1 the gate refused the adapter (no passing verdict), 2 a usage problem
(unknown adapter, --force without --reason, nothing to roll back to).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from refinery.cli_context import cli_errors, current_workspace
from refinery.errors import CheckFailed, UsageError
from refinery.output import JsonOpt, emit_json, print_facts, print_table, stdout

if TYPE_CHECKING:
    from eval.registry import PromotionEvent

#: Columns of `refinery registry` in the terminal (--json has every column of the `registry` view).
TABLE_COLUMNS = ("adapter_id", "status", "promoted_at", "verdict", "metric", "adapter_score", "eval_id", "created_at")


def _show(event: PromotionEvent, as_json: bool) -> None:
    if as_json:
        emit_json(event.to_json())
    elif event.noop:
        stdout.print(f"{event.adapter_id} is already the promoted adapter (since {event.created_at}): nothing to do")
    else:
        print_facts({k: v for k, v in event.to_json().items() if k != "noop"}, title=event.action)


def promote(
    adapter: Annotated[str, typer.Argument(help="Adapter id (adp_...) to make the current adapter.")],
    force: Annotated[
        bool, typer.Option("--force", help="Promote without a passing verdict (needs --reason; recorded).")
    ] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (required with --force; recorded).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an adapter current if its latest eval passed the gate (exit 1 if refused)."""
    with cli_errors():
        from eval.registry import PromotionRefused, RegistryError
        from eval.registry import promote as run_promote

        try:
            event = run_promote(current_workspace().catalog, adapter, force=force, reason=reason)
        except PromotionRefused as exc:
            raise CheckFailed(str(exc)) from exc
        except RegistryError as exc:
            raise UsageError(str(exc)) from exc
        _show(event, as_json)


def rollback(as_json: JsonOpt = False) -> None:
    """Restore the adapter that was current before the latest promotion (repeat to go further back)."""
    with cli_errors():
        from eval.registry import RegistryError
        from eval.registry import rollback as run_rollback

        try:
            event = run_rollback(current_workspace().catalog)
        except RegistryError as exc:
            raise UsageError(str(exc)) from exc
        _show(event, as_json)


def registry(as_json: JsonOpt = False) -> None:
    """Every adapter with its status (promoted, retired, passed, failed, unevaluated) and latest verdict."""
    with cli_errors():
        from eval.registry import current, list_registry

        catalog = current_workspace().catalog
        rows = list_registry(catalog)
        now = current(catalog)
        if as_json:
            emit_json({"current": now.adapter_id if now else None, "adapters": rows})
        else:
            print_table([{c: r[c] for c in TABLE_COLUMNS} for r in rows], title="adapters")
            stdout.print(f"current adapter: {now.adapter_id if now else 'none promoted'}")


def register(app: typer.Typer) -> None:
    """Add promote, rollback and registry as top-level commands of ``app``; calling it again changes nothing."""
    present = {info.name for info in app.registered_commands}
    commands: dict[str, Callable[..., None]] = {"promote": promote, "rollback": rollback, "registry": registry}
    for name, function in commands.items():
        if name not in present:
            app.command(name=name)(function)
