"""`refinery serve` (the HTTP API, docs/SERVICE.md) and `refinery token create | list | revoke` (its API tokens).

Tokens are made on the server machine with the CLI (there is no HTTP bootstrap): `token create` prints the token
once; the catalog keeps only its SHA-256. `serve` runs one uvicorn process over the workspace; SIGTERM or Ctrl-C
stop it gracefully (the running job's child process is stopped with it) and it exits 0.

Exit codes: 0 done (or stopped by a signal); 2 a wrong option, an unknown token id, a port in use, a workspace
that is not there, or the ``service`` extra not installed.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from refinery.cli_context import cli_errors, current_workspace
from refinery.errors import UsageError
from refinery.output import JsonOpt, emit_json, print_facts, print_table, stdout

TOKEN_GROUP = "token"

token_app = typer.Typer(
    help="API tokens of `refinery serve`: shown once, stored hashed; roles viewer < engineer < admin.",
    no_args_is_help=True,
)


def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on (put a TLS reverse proxy in front for others).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = 8000,
    data_dir: Annotated[
        list[Path] | None,
        typer.Option("--data-dir", help="A server-side folder ingest jobs may read files from; repeat."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs, readiness at /healthz) and the dashboard (/ui) until SIGTERM or
    Ctrl-C; jobs run one at a time. With --json, one object ({url, pid, workspace}) once the port is bound."""
    with cli_errors():
        try:
            import uvicorn

            from refinery.service.app import create_app
        except ImportError as exc:
            raise UsageError(f"serve needs the service extra ({exc}): pip install 'refinery[service]'") from exc

        dirs = [d.resolve() for d in data_dir or []]
        missing = [str(d) for d in dirs if not d.is_dir()]
        if missing:
            raise UsageError(f"--data-dir {', '.join(missing)}: no such folder")
        ws = current_workspace()
        sock = _bind(host, port)
        bound = sock.getsockname()[1]
        url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
        facts: dict[str, Any] = {"url": url, "pid": os.getpid(), "workspace": str(ws.root)}
        if as_json:
            emit_json(facts)
        else:
            print_facts(facts, title="refinery serve")
            stdout.print(f"API docs at {url}/docs, dashboard at {url}/ui; stop with Ctrl-C or SIGTERM", highlight=False)
        config = uvicorn.Config(
            create_app(ws.root, data_dirs=dirs),
            log_level="info",
            access_log=True,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
        # uvicorn re-raises the stopping signal once it has shut down; handled here, that ends in exit 0
        stopped: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, frame: stopped.append(number))
        uvicorn.Server(config).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (before uvicorn starts, so a port in use is a one-line error)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="Who or what holds it (recorded with every write it makes).")],
    role: Annotated[
        str, typer.Option("--role", help="viewer (reads), engineer (+ jobs), admin (+ promote, rollback, tokens).")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Make an API token and print it once (only its SHA-256 is stored: a lost token cannot be shown again)."""
    with cli_errors():
        from eval.registry import actor
        from refinery.service.tokens import create_token

        info, token = create_token(current_workspace().catalog, name, role, created_by=actor())
        if as_json:
            emit_json({**info.to_json(), "token": token})
        else:
            print_facts({**info.to_json(), "token": token}, title="token (shown once: store it now)")


@token_app.command("list")
def token_list(as_json: JsonOpt = False) -> None:
    """Every token with its name, role, who made it and when it was revoked (never the token itself)."""
    with cli_errors():
        from refinery.service.tokens import list_tokens

        rows = [info.to_json() for info in list_tokens(current_workspace().catalog)]
        emit_json({"tokens": rows}) if as_json else print_table(rows, title="tokens")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (tok_..., from `refinery token list`).")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token: every request with it gets 401 from now on (revoking twice changes nothing)."""
    with cli_errors():
        from refinery.service.tokens import revoke_token

        info = revoke_token(current_workspace().catalog, token_id)
        emit_json(info.to_json()) if as_json else print_facts(info.to_json(), title="revoked")


def register(app: typer.Typer) -> None:
    """Add `serve` and the `token` group to ``app``; calling it again changes nothing."""
    if "serve" not in {info.name for info in app.registered_commands}:
        app.command(name="serve")(serve_command)
    if not any(group.name == TOKEN_GROUP for group in app.registered_groups):
        app.add_typer(token_app, name=TOKEN_GROUP)
