"""`refinery review serve|stop|push|pull|status|calibrate|auto`: human review in Argilla. Parsing and printing only."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from refinery.cli_context import cli_errors, current_workspace
from refinery.errors import UsageError
from refinery.output import JsonOpt, emit_json, print_facts, print_table, stdout

if TYPE_CHECKING:
    from schemas.catalog import Catalog

REVIEW_GROUP = "review"

review_app = typer.Typer(
    help="Human review in Argilla: a local server or your team's (ARGILLA_API_URL + ARGILLA_API_KEY).",
    no_args_is_help=True,
)

RoundOpt = Annotated[str | None, typer.Option("--round", "-r", help="Review round name (one Argilla dataset each).")]


@review_app.command("serve")
def serve(
    port: Annotated[int, typer.Option(help="Port of the local Argilla server.")] = 6900,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    wait: Annotated[float, typer.Option(help="Seconds to wait for the server to answer.")] = 180.0,
    as_json: JsonOpt = False,
) -> None:
    """Start a local Argilla server for this workspace (SQLite + SQL search, no Elasticsearch)."""
    with cli_errors():
        from curation.review.server import serve as start

        info = start(current_workspace().root, port=port, host=host, wait=wait)
        payload = {k: info.get(k) for k in ("url", "pid", "redis", "log", "credentials_file", "already_running")}
        if as_json:
            emit_json(payload)
            return
        print_facts(payload, title="Argilla server" + (" (already running)" if info.get("already_running") else ""))
        stdout.print(
            f"Sign in at {info['url']} as 'argilla' with the password in {info['credentials_file']} "
            "(the API key is in the same 0600 file). Stop with `refinery review stop`.",
            highlight=False,
            soft_wrap=True,
        )


@review_app.command("stop")
def stop(as_json: JsonOpt = False) -> None:
    """Stop the workspace's local Argilla server (its data stays for the next `serve`)."""
    with cli_errors():
        from curation.review.server import stop as halt

        result = halt(current_workspace().root)
        emit_json(result) if as_json else print_facts(result, title="Argilla server")


def _embedder(catalog: Catalog) -> Callable[[list[str]], list[list[float]]]:
    try:
        from curation.embeddings.cache import record_embeddings  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise UsageError(f"--vectors needs curation.embeddings (the embed extra): {exc}") from exc

    def embed(ids: list[str]) -> list[list[float]]:
        vectors = record_embeddings(catalog, ids, field="prompt")
        return [list(map(float, vectors[i] if isinstance(vectors, dict) else vectors[n])) for n, i in enumerate(ids)]

    return embed


@review_app.command("push")
def push(
    scan: Annotated[str | None, typer.Option("--scan", help="Scan id (default: the latest complete scan).")] = None,
    checks: Annotated[
        str | None, typer.Option(help="Comma-separated checks whose flags to review (default all).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Push at most N records (highest scores first).")] = None,
    round_name: RoundOpt = None,
    annotators: Annotated[int, typer.Option("--annotators", help="Submitted responses needed per record.")] = 1,
    policy: Annotated[str, typer.Option(help="Disagreements: majority, unanimous or escalate.")] = "majority",
    vectors: Annotated[bool, typer.Option("--vectors", help="Add prompt embeddings for similarity search.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send flagged, undecided records to an Argilla dataset (rerun to resume: no duplicates)."""
    with cli_errors():
        from curation.review.connection import resolve_connection
        from curation.review.push import push as run

        ws = current_workspace()
        names = [c.strip() for c in checks.split(",") if c.strip()] if checks else None
        result = run(
            ws.catalog, resolve_connection(ws.root), round_name=round_name, scan_id=scan, checks=names, limit=limit,
            min_submitted=annotators, policy=policy, embed=_embedder(ws.catalog) if vectors else None,
        )  # fmt: skip
        emit_json(result.to_json()) if as_json else print_facts(result.to_json(), title="review push")


@review_app.command("pull")
def pull(
    round_name: RoundOpt = None,
    policy: Annotated[
        str | None, typer.Option(help="Override the round's policy: majority, unanimous or escalate.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch responses (stored raw first), resolve disagreements and apply decisions and edits."""
    with cli_errors():
        from curation.review.connection import resolve_connection
        from curation.review.pull import pull as run

        ws = current_workspace()
        results = [r.to_json() for r in run(ws.catalog, resolve_connection(ws.root), round_name, policy)]
        if as_json:
            emit_json({"rounds": results})
            return
        for result in results:
            agreement = result.pop("agreement")
            print_facts(result, title=f"round {result['round_name']}")
            print_table([{"annotator": a, **f} for a, f in agreement.items()], title="agreement")


@review_app.command("status")
def status(round_name: RoundOpt = None, as_json: JsonOpt = False) -> None:
    """Progress per round (pending, submitted, discarded, decided, agreement) from the last pull."""
    with cli_errors():
        from curation.review.status import status as report

        rows = report(current_workspace().catalog, round_name)
        if as_json:
            emit_json({"rounds": rows})
        else:
            print_table([{k: v for k, v in r.items() if k != "annotators"} for r in rows], title="review rounds")


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise UsageError(f"--thresholds expects comma-separated numbers, got {text!r}") from exc


@review_app.command("calibrate")
def calibrate(
    thresholds: Annotated[str, typer.Option(help="Comma-separated score thresholds.")] = "0.5,0.6,0.7,0.8,0.9,0.95",
    budget: Annotated[int | None, typer.Option(help="Records the team can review per scan.")] = None,
    target: Annotated[float, typer.Option(help="Precision a suggested threshold should reach.")] = 0.8,
    as_json: JsonOpt = False,
) -> None:
    """Precision of each check at several thresholds, from the decisions so far, and a suggested threshold."""
    with cli_errors():
        from curation.review.status import calibrate as run

        result: dict[str, Any] = run(current_workspace().catalog, _floats(thresholds), budget, target)
        if as_json:
            emit_json(result)
            return
        for check, info in result["checks"].items():
            print_table(info["thresholds"], title=f"{check}: suggested threshold {info['suggested_threshold']}")


@review_app.command("auto")
def auto(
    check: Annotated[str, typer.Option(help="The check whose flagged findings the policy acts on.")] = "label_issue",
    min_score: Annotated[float, typer.Option("--min-score", help="Act on findings scoring at least this.")] = 0.7,
    action: Annotated[
        str, typer.Option(help="relabel (take the suggested label: a new record version) or reject.")
    ] = "relabel",
    scan: Annotated[str | None, typer.Option("--scan", help="Scan id (default: the latest complete scan).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Decide by policy, without a human: relabel (or reject) the records a check flags at --min-score or above.

    The decisions are stored like a reviewer's (source 'policy'); a human decision is never overridden.
    """
    with cli_errors():
        from curation.review.auto import ACTIONS, apply_policy

        if action not in ACTIONS:
            raise UsageError(f"--action must be one of {', '.join(ACTIONS)}, got {action!r}")
        result = apply_policy(
            current_workspace().catalog,
            check=check,
            min_score=min_score,
            action=action,
            scan_id=scan,
        ).to_json()
        if as_json:
            emit_json(result)
            return
        changes = result.pop("changes")
        print_facts(result, title=f"review auto: {result['actor']}")
        if changes:
            print_table([{"change": k, "records": v} for k, v in changes.items()], title="most frequent changes")


def register(app: typer.Typer) -> None:
    """Add the `review` group to ``app`` (a second call changes nothing)."""
    if not any(group.name == REVIEW_GROUP for group in app.registered_groups):
        app.add_typer(review_app, name=REVIEW_GROUP)
